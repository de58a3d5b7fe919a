"""Scores -> layer plan. Pure Python: top-k, or k from the cumulative-importance threshold tau (section 7.2
of the Act-LoRA paper): C(k) = sum_{i<=k} s_(i) / sum_i s_(i) over scores sorted descending, and
k_tau = min{k : C(k) >= tau}."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, Problem

# C(k) is a ratio of float sums: without slack, tau = 1.0 could miss k = L by one ulp.
_TAU_SLACK = 1e-12


def min_max(values: list[float | None]) -> tuple[list[float], bool]:
    """Min-max normalise to [0, 1]. A flat profile (max == min) maps to all ones and is flagged, since
    then no layer stands out and the ranking falls to the tie-break. An undefined value (None: a scorer
    could not score that layer) gets score 0, so it is chosen last."""
    defined = [v for v in values if v is not None]
    if not defined:
        return [0.0] * len(values), True
    lo, hi = min(defined), max(defined)
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        return [0.0 if v is None else 1.0 for v in values], True
    return [0.0 if v is None else (v - lo) / (hi - lo) for v in values], False


def ranking(scores: list[float]) -> list[int]:
    """Layer indices by descending score; ties go to the lower layer index (deterministic)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def cumulative_importance(scores: list[float]) -> list[float]:
    """C(k) for k = 1..L."""
    ordered = [scores[i] for i in ranking(scores)]
    total = sum(ordered)
    if total <= 0:
        return [(k + 1) / len(ordered) for k in range(len(ordered))]
    running, curve = 0.0, []
    for s in ordered:
        running += s
        curve.append(running / total)
    return curve


def k_for_tau(scores: list[float], tau: float) -> int:
    curve = cumulative_importance(scores)
    return next(k for k, c in enumerate(curve, start=1) if c >= tau - _TAU_SLACK)


@dataclass(frozen=True)
class Plan:
    """The chosen layers (ascending), how they were chosen, and the C(k) curve."""

    layers: list[int]
    k: int
    tau: float | None
    rule: str  # top_k | tau | all
    ranking: list[int]
    curve: list[float]


def select(scores: list[float], k: int | str | None = None, tau: float | None = None) -> Plan:
    """Top-k layers, the least k reaching tau, or every layer (k='all'). Exactly one of k, tau."""
    n = len(scores)
    order, curve = ranking(scores), cumulative_importance(scores)
    if (k is None) == (tau is None):
        raise ConfigError(
            [Problem("rank.k / rank.tau", "give exactly one of them", "e.g. --k 3, --k all, or --tau 0.5")]
        )
    if tau is not None:
        chosen, rule = k_for_tau(scores, tau), "tau"
    elif k == "all":
        chosen, rule = n, "all"
    else:
        assert isinstance(k, int)
        if not 1 <= k <= n:
            raise ConfigError(
                [Problem("rank.k", f"k={k} but the model has {n} layers", f"choose k in 1..{n} or 'all'")]
            )
        chosen, rule = k, "top_k"
    return Plan(sorted(order[:chosen]), chosen, tau, rule, order, curve)
