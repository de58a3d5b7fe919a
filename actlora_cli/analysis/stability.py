"""Stability of a scorer's layer ranking across random seeds (section 7.3, Tables 9 and 10 of the Act-LoRA
paper): pairwise Kendall tau-b between the seeds' scores, and pairwise Jaccard similarity of their top-k
layer sets.

Standard deviations are population ones (ddof=0) over the seed pairs: that is what reproduces the paper's
Table 10 (10 seeds in two groups of 5 whose top-4 sets differ in one layer: J = 0.7778 ± 0.1988; the sample
std would give 0.2010)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from ..errors import ActloraError, Problem
from ..selection import ranking
from .correlation import check_vectors, similarity
from .report import markdown_table, mean_std


def summarise(values: list[float | None]) -> dict:
    """Mean and population std of the defined values, with how many there were and how many were not."""
    defined = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(defined)) if defined else None,
        "std": float(np.std(defined)) if defined else None,
        "n": len(defined),
        "n_undefined": len(values) - len(defined),
    }


def jaccard(a: set[int], b: set[int]) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a | b else 1.0


def seed_stability(scores_by_seed: list[list[float]], ks: list[int]) -> dict:
    """Pairwise Kendall tau-b over all seed pairs ("kendall_tau": mean, std, n, n_undefined, values),
    pairwise top-k Jaccard for each k ("jaccard": {str(k): the same}), and the per-layer mean/std of the
    scores ("per_layer"); "pairs" lists the seed index pairs in the order of the values. Top-k sets come
    from selection.ranking, so ties go to the lower layer index exactly as when the plan is chosen. A pair
    whose tau is undefined (a seed's scores are constant) is None, left out of the mean/std and counted in
    n_undefined, its reason listed."""
    if len(scores_by_seed) < 2:
        raise ActloraError(
            Problem("scores_by_seed", f"{len(scores_by_seed)} seed(s)", "give at least 2 seeds")
        )
    names = [f"seed {i}" for i in range(len(scores_by_seed))]
    checked = check_vectors(
        dict(zip(names, scores_by_seed, strict=True)), "score every seed on the same model"
    )
    arrays = list(checked.values())
    n_layers = arrays[0].size
    bad = [k for k in ks if not 1 <= k <= n_layers]
    if bad:
        raise ActloraError(
            Problem("ks", f"{bad} outside 1..{n_layers} (the number of layers)", f"choose k in 1..{n_layers}")
        )
    pairs = list(combinations(range(len(arrays)), 2))
    taus, reasons = [], []
    for i, j in pairs:
        tau, reason = similarity(arrays[i], arrays[j], "kendall", (names[i], names[j]))
        taus.append(tau)
        if reason is not None:
            reasons.append(reason)
    orders = [ranking(a.tolist()) for a in arrays]
    jaccards = {}  # keyed by str(k): JSON object keys are strings
    for k in ks:
        values = [jaccard(set(orders[i][:k]), set(orders[j][:k])) for i, j in pairs]
        jaccards[str(k)] = {**summarise(values), "values": values}
    stacked = np.stack(arrays)
    return {
        "n_seeds": len(arrays),
        "n_layers": int(n_layers),
        "n_pairs": len(pairs),
        "pairs": [list(p) for p in pairs],
        "kendall_tau": {**summarise(taus), "values": taus, "undefined": sorted(set(reasons))},
        "jaccard": jaccards,
        "per_layer": {"mean": stacked.mean(axis=0).tolist(), "std": stacked.std(axis=0).tolist()},
    }


def markdown(result: dict, label: str = "scores") -> str:
    """Tables 9 and 10 layout: Kendall tau (mean ± std) over seed pairs, then top-k Jaccard for each k."""
    head = (
        f"{result['n_seeds']} seeds, {result['n_pairs']} pairs, {result['n_layers']} layers; "
        "std over pairs (ddof=0)\n\n"
    )
    tau = markdown_table(["Scorer", "Kendall τ (mean ± std)"], [[label, mean_std(result["kendall_tau"])]])
    jac = markdown_table(
        ["k", f"Jaccard {label} (mean ± std)"], [[k, mean_std(r)] for k, r in result["jaccard"].items()]
    )
    notes = "".join(f"- Kendall τ undefined: {reason}\n" for reason in result["kendall_tau"]["undefined"])
    return head + tau + ("\n" + notes if notes else "") + "\n" + jac
