"""Is a scorer's layer importance task-dependent? (section 7.4 of the Act-LoRA paper): Spearman and Kendall
tau-b rank correlations between the per-layer scores of every pair of tasks."""

from __future__ import annotations

from itertools import combinations, combinations_with_replacement

from ..errors import ActloraError, Problem
from .correlation import check_vectors, similarity
from .report import format_value, markdown_table
from .stability import summarise

RANK_MEASURES = ("spearman", "kendall")


def task_agreement(scores_by_task: dict[str, list[float]]) -> dict:
    """Task x task Spearman and Kendall matrices as {"spearman": {task: {task: value}}, "kendall": ...},
    "mean_off_diagonal": {measure: mean} and "off_diagonal": {measure: mean, population std, n,
    n_undefined}. A pair involving a task with constant scores is None, left out of the mean, and its reason
    is listed in "undefined"."""
    if len(scores_by_task) < 2:
        raise ActloraError(
            Problem("scores_by_task", f"{len(scores_by_task)} task(s)", "give at least 2 tasks")
        )
    tasks = list(scores_by_task)
    arrays = check_vectors(scores_by_task, "score every task on the same model")
    result: dict = {"tasks": tasks, "n_layers": int(arrays[tasks[0]].size)}
    summaries, undefined = {}, set()
    for measure in RANK_MEASURES:
        matrix: dict[str, dict[str, float | None]] = {a: dict.fromkeys(tasks) for a in tasks}
        for a, b in combinations_with_replacement(tasks, 2):
            value, reason = similarity(arrays[a], arrays[b], measure, (a, b))
            matrix[a][b] = matrix[b][a] = value
            if reason is not None and a != b:
                undefined.add(reason)
        result[measure] = matrix
        summaries[measure] = summarise([matrix[a][b] for a, b in combinations(tasks, 2)])
    result["mean_off_diagonal"] = {measure: summary["mean"] for measure, summary in summaries.items()}
    result["off_diagonal"] = summaries
    result["undefined"] = sorted(undefined)
    return result


def markdown(result: dict) -> str:
    """Each matrix as a table, titled with its mean off-diagonal value; undefined pairs explained last."""
    tasks, parts = result["tasks"], []
    for measure in RANK_MEASURES:
        mean = format_value(result["mean_off_diagonal"][measure])
        rows = [[a, *result[measure][a].values()] for a in tasks]
        table = markdown_table(["Task", *tasks], rows)
        parts.append(f"{measure.capitalize()} (mean off-diagonal {mean})\n\n{table}")
    notes = "".join(f"- undefined: {reason}\n" for reason in result["undefined"])
    return "\n".join(parts) + ("\n" + notes if notes else "")
