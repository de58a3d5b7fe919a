"""How well each importance scorer tracks a reference importance, e.g. the accuracy drop when a layer is
ablated (section 7.5, Table 11 of the Act-LoRA paper): Pearson, Spearman, Kendall tau-b and cosine
similarity. This module also owns the measures themselves and the checks on score vectors, which the
stability and agreement studies reuse.

A measure that is undefined (a constant vector has no rank order and no variance; an all-zero vector has no
direction) is reported as None with the reason, never as NaN, so every result stays valid JSON."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

from ..errors import ActloraError, Problem
from .report import markdown_table

MEASURES = ("pearson", "spearman", "kendall", "cosine")


def check_vectors(named: dict[str, list[float]], fix: str) -> dict[str, np.ndarray]:
    """Score vectors as float arrays, after checking that each has at least two finite values and all have
    the same length. Every problem is reported together; ``fix`` says how the caller's user repairs them."""
    problems, arrays = [], {}
    for name, values in named.items():
        if any(v is None for v in values):
            problems.append(
                Problem(
                    name,
                    "has undefined (None) layer scores",
                    "normalise with actlora_cli.selection.min_max, which scores them 0",
                )
            )
            continue
        array = np.asarray(values, dtype=float)
        if array.ndim != 1 or array.size < 2:
            problems.append(Problem(name, f"needs at least 2 layer scores, got shape {array.shape}", fix))
        elif not np.isfinite(array).all():
            problems.append(Problem(name, "has NaN or infinite scores", fix))
        else:
            arrays[name] = array
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        problems += [
            Problem(name, f"has {n} layer scores but {first} has {lengths[first]}", fix)
            for name, n in lengths.items()
            if n != lengths[first]
        ]
    if problems:
        raise ActloraError(problems)
    return arrays


def _statistic(test: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda a, b: float(test(a, b).statistic)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    # Clipped: rounding can leave |cos| a few ulp above 1 for parallel vectors.
    return float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))


# kendalltau's default variant is tau-b, which corrects for ties (the min-max ends often tie).
_MEASURE = {
    "pearson": _statistic(stats.pearsonr),
    "spearman": _statistic(stats.spearmanr),
    "kendall": _statistic(stats.kendalltau),
    "cosine": _cosine,
}


def _why_undefined(measure: str, a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> str | None:
    if measure == "cosine":
        bad, problem = [n for n, v in zip(names, (a, b), strict=True) if not v.any()], "all zeros"
    else:
        bad, problem = (
            [n for n, v in zip(names, (a, b), strict=True) if (v == v[0]).all()],
            "constant across layers",
        )
    return f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} {problem}" if bad else None


def similarity(
    a: np.ndarray, b: np.ndarray, measure: str, names: tuple[str, str] = ("first", "second")
) -> tuple[float | None, str | None]:
    """One of MEASURES between two checked vectors: (value, None), or (None, why it is undefined), the
    reason naming the vectors by ``names``."""
    reason = _why_undefined(measure, a, b, names)
    if reason is not None:
        return None, reason
    value = _MEASURE[measure](a, b)
    # Guard against a degenerate case the checks above miss (e.g. near-constant input underflowing).
    return (value, None) if math.isfinite(value) else (None, "not finite (near-constant input)")


def correlate_with_reference(scorers: dict[str, list[float]], reference: list[float]) -> dict:
    """Pearson, Spearman, Kendall tau-b and cosine of each scorer's per-layer scores against ``reference``,
    as {scorer: {measure: value | None, ..., "undefined": {measure: reason}}}."""
    if not scorers:
        raise ActloraError(Problem("scorers", "no scorers to compare", "pass at least one scorer's scores"))
    fix = "give every scorer and the reference one score per layer of the same model"
    arrays = check_vectors({"reference": reference, **{f"scorer '{n}'": v for n, v in scorers.items()}}, fix)
    result = {}
    for name in scorers:
        row, undefined = {}, {}
        for measure in MEASURES:
            row[measure], reason = similarity(
                arrays[f"scorer '{name}'"], arrays["reference"], measure, (name, "reference")
            )
            if reason is not None:
                undefined[measure] = reason
        result[name] = {**row, "undefined": undefined}
    return result


def markdown(result: dict) -> str:
    """Table 11 layout: one row per scorer; undefined values as n/a with the reasons underneath."""
    headers = ["Scorer", "Pearson ρ", "Spearman ρs", "Kendall τ", "cos(θ)"]
    rows = [[name, *(row[m] for m in MEASURES)] for name, row in result.items()]
    notes = [
        f"- {name}, {measure}: n/a because {reason}"
        for name, row in result.items()
        for measure, reason in row["undefined"].items()
    ]
    return markdown_table(headers, rows) + ("\n" + "\n".join(notes) + "\n" if notes else "")
