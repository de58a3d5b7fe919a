"""Is a scorer's layer importance task-dependent? (section 7.4 of the Act-LoRA paper): Spearman and Kendall
tau-b rank correlations between the per-layer scores of every pair of tasks. The same matrices compare
scorers with each other (do activation norms, gradients and CKA rank the layers alike?), with the top-k
plans each would choose."""

from __future__ import annotations

from itertools import combinations, combinations_with_replacement

from ..errors import ActloraError, Problem
from ..selection import select
from .correlation import check_vectors, similarity
from .report import format_value, markdown_table
from .stability import summarise

RANK_MEASURES = ("spearman", "kendall")


def task_agreement(scores_by_task: dict[str, list[float]], what: str = "task") -> dict:
    """Task x task (or scorer x scorer: ``what``) Spearman and Kendall matrices as {"spearman": {task:
    {task: value}}, "kendall": ...}, "mean_off_diagonal": {measure: mean} and "off_diagonal": {measure:
    mean, population std, n, n_undefined}. A pair involving a task with constant scores is None, left out
    of the mean, and its reason is listed in "undefined"."""
    if len(scores_by_task) < 2:
        raise ActloraError(
            Problem(f"scores_by_{what}", f"{len(scores_by_task)} {what}(s)", f"give at least 2 {what}s")
        )
    tasks = list(scores_by_task)
    arrays = check_vectors(scores_by_task, f"score every {what} on the same model")
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


def scorer_agreement(scores_by_scorer: dict[str, list[float]], ks: list[int]) -> dict:
    """Scorer x scorer rank agreement (as task_agreement) of one score vector per scorer, and each scorer's
    top-k plan for every k ("plans": {k: {scorer: layers}}), chosen by selection.select as rank would."""
    result = task_agreement(scores_by_scorer, what="scorer")
    result["plans"] = {
        str(k): {name: select(scores, k=k).layers for name, scores in scores_by_scorer.items()} for k in ks
    }
    return result


def markdown(result: dict, label: str = "Task") -> str:
    """Each matrix as a table, titled with its mean off-diagonal value; undefined pairs explained last (and
    the plans, for a scorer comparison)."""
    tasks, parts = result["tasks"], []
    for measure in RANK_MEASURES:
        mean = format_value(result["mean_off_diagonal"][measure])
        rows = [[a, *result[measure][a].values()] for a in tasks]
        table = markdown_table([label, *tasks], rows)
        parts.append(f"{measure.capitalize()} (mean off-diagonal {mean})\n\n{table}")
    if "plans" in result:
        rows = [[k, *(", ".join(map(str, plan[n])) for n in tasks)] for k, plan in result["plans"].items()]
        parts.append("Top-k plans\n\n" + markdown_table(["k", *tasks], rows))
    notes = "".join(f"- undefined: {reason}\n" for reason in result["undefined"])
    return "\n".join(parts) + ("\n" + notes if notes else "")
