"""The frontier study's statistics, pure numpy: the paired difference of two plans over seeds with a bootstrap
interval that resamples both the seeds and the validation examples (the same examples for both plans: the
pairing is what makes a one-point difference visible against a 0.9-point standard error), a plan's
percentile among random plans, and the Pareto front of metric against cost."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_difference(
    correct_a: Sequence[np.ndarray], correct_b: Sequence[np.ndarray], reps: int = 2000, seed: int = 0
) -> dict[str, float | int]:
    """Mean over seeds of accuracy(a) - accuracy(b), with a 95 % percentile bootstrap interval.

    ``correct_a[s]`` / ``correct_b[s]``: per validation example, 1 where seed s's model was right. Each
    bootstrap replicate draws the seeds with replacement and one set of examples with replacement, shared by
    both plans and all seeds (the examples are the same sentences for every run)."""
    a = np.asarray(correct_a, dtype=np.float64)  # (seeds, examples)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"paired runs need equal (seeds, examples) shapes, got {a.shape} and {b.shape}")
    diff = a - b  # per seed and example
    seeds, n = diff.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for r in range(reps):
        rows = rng.integers(0, seeds, seeds)
        cols = rng.integers(0, n, n)
        stats[r] = diff[np.ix_(rows, cols)].mean()
    low, high = np.percentile(stats, [2.5, 97.5])
    return {
        "difference": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "per_seed": [float(d) for d in diff.mean(axis=1)],
        "seeds": int(seeds),
        "examples": int(n),
    }


def percentile_among(value: float, others: Sequence[float]) -> float | None:
    """The share of ``others`` below ``value``, ties counted half (100 = above every one)."""
    if not others:
        return None
    below = sum(o < value for o in others)
    ties = sum(o == value for o in others)
    return 100.0 * (below + 0.5 * ties) / len(others)


def pareto_front(costs: Sequence[float], metrics: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (no dearer and no worse, and better in one), by cost."""
    points = list(zip(costs, metrics, strict=True))
    front = []
    for i, (c, m) in enumerate(points):
        dominated = any(
            (c2 <= c and m2 >= m) and (c2 < c or m2 > m) for j, (c2, m2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: costs[i])


def buckets(costs: Sequence[float], count: int) -> list[int]:
    """Each point's cost bucket 0..count-1, by quantiles of the costs (equal numbers of points)."""
    order = np.argsort(np.asarray(costs), kind="stable")
    out = [0] * len(costs)
    for rank, i in enumerate(order):
        out[int(i)] = min(count - 1, rank * count // max(1, len(costs)))
    return out
