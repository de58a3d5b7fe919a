"""Cumulative importance threshold mapping (section 7.2, Table 8 of the Act-LoRA paper): for each tau, the
least number of top-ranked layers k_tau whose share of the total importance C(k) reaches tau."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ActloraError, Problem
from ..selection import cumulative_importance, k_for_tau
from .correlation import check_vectors
from .report import markdown_table

PAPER_TAUS = (0.25, 0.5, 0.75, 1.0)


def threshold_table(scores: list[float], taus: Sequence[float] = PAPER_TAUS) -> list[dict[str, float | int]]:
    """One row {"tau", "k", "C(k)"} per tau: k = k_tau from selection.k_for_tau and the C(k) it reaches."""
    check_vectors({"scores": scores}, "give one score per layer")
    bad = [t for t in taus if not 0 < t <= 1]
    if bad:
        raise ActloraError(
            Problem("taus", f"{bad} outside (0, 1]", "give thresholds such as 0.25, 0.5, 0.75, 1.0")
        )
    scores = [float(s) for s in scores]
    curve = cumulative_importance(scores)
    ks = [k_for_tau(scores, tau) for tau in taus]
    return [{"tau": float(tau), "k": k, "C(k)": curve[k - 1]} for tau, k in zip(taus, ks, strict=True)]


def markdown(rows: list[dict[str, float | int]]) -> str:
    """Table 8 layout: threshold as a percentage, the top-k layers required, and the C(k) reached."""
    return markdown_table(
        ["Cumulative importance threshold", "Top-k layers required", "C(k)"],
        [[f"{100 * r['tau']:g}%", r["k"], r["C(k)"]] for r in rows],
    )
