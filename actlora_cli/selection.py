"""Scores -> layer plan. Pure Python: top-k, or k from the cumulative-importance threshold tau (section 7.2
of the Act-LoRA paper): C(k) = sum_{i<=k} s_(i) / sum_i s_(i) over scores sorted descending, and
k_tau = min{k : C(k) >= tau}."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from .errors import ArtifactError, ConfigError, Problem

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


def min_max_stderr(values: list[float | None], stderr: list[float] | None) -> list[float] | None:
    """Standard errors of raw values carried to the min-max scale: divided by (max - min) of the defined
    values (the shift by min moves nothing). None without errors, or for a flat profile."""
    defined = [v for v in values if v is not None]
    if stderr is None or not defined or max(defined) - min(defined) <= 0:
        return None
    span = max(defined) - min(defined)
    return [e / span for e in stderr]


PairNoise = Callable[[int, int], float]  # (layer a, layer b) -> standard error of their difference


def paired_noise(per_batch: list[list[float]] | None, span: float = 1.0) -> PairNoise | None:
    """The standard error of the difference of two layers' means over the same S batches: the spread of the
    per-batch differences / sqrt(S), divided by ``span`` (max - min of the raw values, for min-max scores).
    Two layers see the same batches, so their per-batch values move together (a batch of long sentences
    raises every layer's norm); the independent formula, sqrt(se_a^2 + se_b^2), counts that shared movement as
    noise and overstates it. None without per-batch values (or S < 2)."""
    if not per_batch or len(per_batch) < 2 or span <= 0:
        return None
    n = len(per_batch)

    def noise(a: int, b: int) -> float:
        diffs = [row[a] - row[b] for row in per_batch]
        mean = sum(diffs) / n
        return (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 / n**0.5 / span

    return noise


def scores_noise(scores_doc: dict[str, Any]) -> PairNoise | None:
    """paired_noise on a scores document's min-max scale (its raw_per_batch, when the scorer kept them)."""
    defined = [v for v in scores_doc.get("raw") or [] if v is not None]
    if not defined:
        return None
    return paired_noise(scores_doc.get("raw_per_batch"), max(defined) - min(defined))


def boundary(
    k: int,
    scores: list[float],
    stderr: list[float] | None,
    order: list[int],
    pair_noise: PairNoise | None = None,
):
    """The boundary of the top-k of ``order`` against the probe's noise: the last layer in, the first left
    out, and whether their gap lies within twice the standard error of the difference (another probe seed
    could then swap them). The error is the paired one (``pair_noise``) where per-batch values are known,
    else sqrt(se_a^2 + se_b^2) from ``stderr``. None when there is no boundary (every layer chosen) or no
    errors."""
    if (stderr is None and pair_noise is None) or k >= len(order):
        return None
    inside, outside = order[k - 1], order[k]
    gap = scores[inside] - scores[outside]
    independent = None if stderr is None else (stderr[inside] ** 2 + stderr[outside] ** 2) ** 0.5
    noise = pair_noise(inside, outside) if pair_noise is not None else independent
    return {
        "last_in": inside,
        "first_out": outside,
        "gap": gap,
        "noise": noise,
        "paired": pair_noise is not None,
        "independent_noise": independent,
        "within_noise": gap < 2 * noise,
    }


def cheaper_at_a_tie(
    plan: Plan,
    scores: list[float],
    stderr: list[float] | None,
    pair_noise: PairNoise | None = None,
) -> Plan:
    """rank.tie_break=cost: when a top-k plan's boundary lies within the probe's noise and the first layer
    left out sits above the last one in, take it instead: the backward stops at the lowest adapted layer, so
    the plan costs the same or less, and the probe cannot tell the two layers apart anyway."""
    edge = boundary(plan.k, scores, stderr, plan.ranking or [], pair_noise)
    if edge is None or not edge["within_noise"] or edge["first_out"] < edge["last_in"]:
        return plan
    layers = sorted((set(plan.layers) - {edge["last_in"]}) | {edge["first_out"]})
    return replace(plan, layers=layers, coverage=_coverage(scores, layers))


def ranking(scores: list[float], undefined: Collection[int] = ()) -> list[int]:
    """Layer indices by descending score; ties go to the lower layer index (deterministic). Layers a scorer
    left ``undefined`` (CKA's embedding pair) come last: min-max gives them the same 0 as the least-scoring
    defined layer, and the index tie-break alone would put a low undefined layer first among those."""
    return sorted(range(len(scores)), key=lambda i: (i in undefined, -scores[i], i))


def cumulative_importance(scores: list[float], undefined: Collection[int] = ()) -> list[float]:
    """C(k) for k = 1..L, over the ranking."""
    ordered = [scores[i] for i in ranking(scores, undefined)]
    total = sum(ordered)
    if total <= 0:
        return [(k + 1) / len(ordered) for k in range(len(ordered))]
    running, curve = 0.0, []
    for s in ordered:
        running += s
        curve.append(running / total)
    return curve


def k_for_tau(scores: list[float], tau: float, undefined: Collection[int] = ()) -> int:
    curve = cumulative_importance(scores, undefined)
    return next(k for k, c in enumerate(curve, start=1) if c >= tau - _TAU_SLACK)


# The plan's fields, in the order selection.json lists them (its other fields are provenance: scores, scorer).
PLAN_FIELDS = (
    "layers",
    "k",
    "tau",
    "rule",
    "ranking",
    "cumulative_importance",
    "coverage",
    "strategy",
    "seed",
)
# fields a plan written before they existed lacks, and what they meant then
_LATER_FIELDS = {"strategy": "scores", "seed": None}

# Strategies that choose by position alone: no probe behind them (the plans a guided one must beat)
POSITIONAL = ("last", "first", "uniform", "random")


@dataclass(frozen=True)
class Plan:
    """The chosen layers (ascending), how they were chosen, and, when scores were behind it, the ranking and
    the C(k) curve. ``to_doc``/``from_doc`` are its JSON form, so readers never index nested strings."""

    layers: list[int]
    k: int
    tau: float | None
    rule: str  # how many: top_k (a given k) | tau | all | explicit
    ranking: list[int] | None  # layers by descending score; None for a plan made without scores
    cumulative_importance: list[float] | None  # C(k) for k = 1..L, over the same scores
    coverage: float | None  # the plan's share of the total score (C(k) for a top-k plan)
    # which k (rank.strategy): scores | inverse | last | first | uniform | random; None for all / explicit
    strategy: str | None = "scores"
    seed: int | None = None  # the random strategy's draw
    source: str = ""  # where it came from (a file, a flag), for reports; not part of the JSON form

    @property
    def guided(self) -> bool:
        """The probe's own choice: the top of its ranking, by k or by tau (what a boundary is defined for)."""
        return self.strategy == "scores" and self.rule in ("top_k", "tau")

    def to_doc(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PLAN_FIELDS}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], source: str) -> Plan:
        """Read a plan back (selection.json); a missing or mistyped field is an ArtifactError naming
        ``source``."""
        doc = {**_LATER_FIELDS, **doc}
        missing = [name for name in PLAN_FIELDS if name not in doc]
        layers = doc.get("layers")
        bad = (
            [] if isinstance(layers, list) and layers and all(type(i) is int for i in layers) else ["layers"]
        )
        if missing or bad:
            what = (
                f"missing {', '.join(missing)}"
                if missing
                else f"layers must be a list of layer indices ({layers!r})"
            )
            raise ArtifactError(Problem(source, f"not a layer plan: {what}", "re-run `actlora rank`"))
        return cls(**{name: doc[name] for name in PLAN_FIELDS})

    def check_fits(self, num_layers: int, source: str) -> None:
        """Every planned layer exists in a model of ``num_layers`` layers, and the scores behind the plan (its
        ranking) were made for a model of that many layers (``source`` names the plan's origin)."""
        if self.ranking is not None and len(self.ranking) != num_layers:
            raise ArtifactError(
                Problem(
                    source,
                    f"made from scores of {len(self.ranking)} layers, but the model has {num_layers} layers",
                    "run `actlora probe` and `actlora rank` for this model",
                )
            )
        outside = [i for i in self.layers if not 0 <= i < num_layers]
        if outside:
            raise ConfigError(
                [
                    Problem(
                        source,
                        f"layer(s) {outside} but the model has {num_layers} (0..{num_layers - 1})",
                        "plan layers the model has",
                    )
                ]
            )


def _coverage(scores: list[float], layers: list[int]) -> float:
    total = sum(scores)
    return len(layers) / len(scores) if total <= 0 else sum(scores[i] for i in layers) / total


def select(
    scores: list[float], k: int | str | None = None, tau: float | None = None, undefined: Collection[int] = ()
) -> Plan:
    """Top-k layers, the least k reaching tau, or every layer (k='all'). Exactly one of k, tau. Layers in
    ``undefined`` are ranked last (chosen only when k reaches them)."""
    n = len(scores)
    order, curve = ranking(scores, undefined), cumulative_importance(scores, undefined)
    if (k is None) == (tau is None):
        raise ConfigError(
            [Problem("rank.k / rank.tau", "give exactly one of them", "e.g. --k 3, --k all, or --tau 0.5")]
        )
    if tau is not None:
        chosen, rule = k_for_tau(scores, tau, undefined), "tau"
    elif k == "all":
        chosen, rule = n, "all"
    else:
        assert isinstance(k, int)
        if not 1 <= k <= n:
            raise ConfigError(
                [Problem("rank.k", f"k={k} but the model has {n} layers", f"choose k in 1..{n} or 'all'")]
            )
        chosen, rule = k, "top_k"
    return Plan(sorted(order[:chosen]), chosen, tau, rule, order, curve, curve[chosen - 1])


def every_layer(num_layers: int) -> Plan:
    """LoRA on every layer (k='all'): no scores behind it, so no ranking."""
    return Plan(list(range(num_layers)), num_layers, None, "all", None, None, 1.0, strategy=None)


def _check_k(k: int, num_layers: int) -> None:
    if not 1 <= k <= num_layers:
        fix = f"choose k in 1..{num_layers} or 'all'"
        raise ConfigError([Problem("rank.k", f"k={k} but the model has {num_layers} layers", fix)])


def positional_layers(strategy: str, k: int, num_layers: int, seed: int = 0) -> list[int]:
    """k of ``num_layers`` layers chosen by position: the last k, the first k, the centres of k equal spans
    of the stack (uniform: 1, 3, 5 of 6 for k = 3), or k drawn at random with ``seed``."""
    _check_k(k, num_layers)
    if strategy == "last":
        return list(range(num_layers - k, num_layers))
    if strategy == "first":
        return list(range(k))
    if strategy == "uniform":
        # span i is [i L/k, (i+1) L/k); its centre, floored. Spans are at least one layer wide: all distinct.
        return [(2 * i + 1) * num_layers // (2 * k) for i in range(k)]
    if strategy == "random":
        return sorted(random.Random(seed).sample(range(num_layers), k))
    raise ValueError(f"not a positional strategy: {strategy}")


def by_strategy(
    strategy: str,
    k: int | str,
    num_layers: int,
    seed: int = 0,
    scores: list[float] | None = None,
    undefined: Collection[int] = (),
) -> Plan:
    """rank.k layers by ``strategy`` (see config.RankSection.strategy). The scores strategies need
    ``scores``; the positional ones record, when scores are given, the ranking and the share they cover."""
    if k == "all":
        return every_layer(num_layers)
    assert isinstance(k, int)
    if strategy in ("scores", "inverse") and scores is None:
        raise ConfigError(
            [Problem("rank.strategy", f"{strategy} needs the probe's scores", "run `actlora probe` first")]
        )
    if strategy == "scores":
        return select(scores, k=k, undefined=undefined)
    if strategy == "inverse":
        _check_k(k, len(scores))
        layers = sorted(ranking(scores, undefined)[-k:])
    else:
        layers = positional_layers(strategy, k, num_layers, seed)
    plan = replace(explicit(layers, scores, undefined), rule="top_k", strategy=strategy)
    return replace(plan, seed=seed) if strategy == "random" else plan


def explicit(layers: list[int], scores: list[float] | None = None, undefined: Collection[int] = ()) -> Plan:
    """The layers a user named (rank.layers); with scores, the ranking and the share of the score they
    cover."""
    layers = sorted(layers)
    if scores is None:
        return Plan(layers, len(layers), None, "explicit", None, None, None, strategy=None)
    order, curve = ranking(scores, undefined), cumulative_importance(scores, undefined)
    plan = Plan(layers, len(layers), None, "explicit", order, curve, None, strategy=None)
    plan.check_fits(len(scores), "rank.layers")
    return replace(plan, coverage=_coverage(scores, layers))
