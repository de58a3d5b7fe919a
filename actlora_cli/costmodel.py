"""The cost model: a plan's step time and device-hours predicted from ``costs.json`` (``actlora profile``),
and the plan with the greatest total score whose predicted cost fits a budget. Pure Python.

What the profile measures, on this device at the task's shapes, is the step time of the one-layer plans
{m} for every layer m (the backward runs from the head down to the lowest adapted layer, so the lowest
layer sets most of the cost) and of the plan with every layer. The model is

    step(P) = lowest[min P] + (|P| - 1) * adapter

where ``adapter`` = (step(all) - lowest[0]) / (L - 1) is what one more adapted layer above the lowest adds
(its adapter's forward, weight gradients and optimizer update; the layers are alike, so one number). With
the frozen-prefix cache, epochs after the first skip the forward of the layers below m: ``prefix[m] -
prefix[0]``, where ``prefix[m]`` is the time from the step's start to layer m's input, measured in the plan
{m} (the embeddings still run on a replayed step).

Because the cost depends on the plan only through (its lowest layer, its size), the best plan within a
budget is found exactly by trying every lowest layer m and size c: the best such plan is m with the c - 1
highest-scoring layers above m. That is O(L^2 log L) (``search="lowest-layer"``); for small L every subset
is also enumerated (``search="exact"``) and the tests hold the two to the same answer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, Problem

EXACT_UP_TO = 16  # layers: 2^16 subsets are enumerated in well under a second


@dataclass(frozen=True)
class CostModel:
    """Per-step seconds from a profile, and the run's shape (steps, epochs, the cache) to scale them."""

    lowest: list[float]  # step seconds of the plan {m}, m = 0..L-1
    every: float  # step seconds of the plan with every layer
    prefix: list[float]  # seconds of the forward before layer m's input (embeddings + layers < m)

    @property
    def num_layers(self) -> int:
        return len(self.lowest)

    @property
    def adapter(self) -> float:
        """Seconds one more adapted layer above the lowest adds (never negative: noise can make it so)."""
        if self.num_layers < 2:
            return 0.0
        return max(0.0, (self.every - self.lowest[0]) / (self.num_layers - 1))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CostModel:
        s = doc["step_seconds"]
        return cls(list(s["lowest"]), float(s["all"]), list(doc["prefix_forward_seconds"]))

    def step_seconds(self, layers: list[int], cached: bool = False) -> float:
        """One optimizer step of the plan; ``cached``: an epoch that replays the frozen prefix."""
        return self.size_step(min(layers), len(layers), cached)

    def saved_by_cache(self, lowest: int) -> float:
        """A replayed step skips the layers below ``lowest`` (the embeddings still run)."""
        return max(0.0, self.prefix[lowest] - self.prefix[0])

    def size_step(self, lowest: int, size: int, cached: bool = False) -> float:
        """One step of any plan of ``size`` layers whose lowest is ``lowest``: all the model looks at."""
        seconds = self.lowest[lowest] + (size - 1) * self.adapter
        return max(0.0, seconds - self.saved_by_cache(lowest)) if cached else seconds


@dataclass(frozen=True)
class RunShape:
    """How a run spends its steps: the first epoch computes the prefix, later ones replay it when cached."""

    total_steps: int
    steps_per_epoch: int
    prefix_cache: bool
    world: int = 1

    def split(self) -> tuple[int, int]:
        """(uncached steps, cached steps)."""
        if not self.prefix_cache:
            return self.total_steps, 0
        first = min(self.total_steps, self.steps_per_epoch)
        return first, self.total_steps - first


def predict(model: CostModel, layers: list[int], shape: RunShape) -> dict[str, float]:
    """The plan's predicted step seconds (first epoch, cached epochs, mean over the run) and device-hours."""
    plain, cached = shape.split()
    first = model.step_seconds(layers)
    later = model.step_seconds(layers, cached=shape.prefix_cache)
    seconds = plain * first + cached * later
    return {
        "step_seconds": round(first, 6),
        "cached_step_seconds": round(later, 6) if cached else None,
        "mean_step_seconds": round(seconds / max(1, shape.total_steps), 6),
        "step_seconds_total": round(seconds, 3),
        "device_hours": round(seconds * shape.world / 3600, 6),
    }


def _run_seconds(model: CostModel, lowest: int, size: int, shape: RunShape) -> float:
    plain, cached = shape.split()
    return plain * model.size_step(lowest, size) + cached * model.size_step(lowest, size, shape.prefix_cache)


def _key(total: float, seconds: float, layers: tuple[int, ...]) -> tuple:
    # the greatest total score; at equal score the cheaper plan, then the higher layers (deterministic)
    return (round(total, 12), -round(seconds, 9), layers)


def within_budget(
    model: CostModel,
    scores: list[float],
    shape: RunShape,
    limit_seconds: float,
    k: int | None = None,
    search: str = "auto",
) -> tuple[list[int], float, str] | None:
    """The plan (of k layers, or of any size when k is None) with the greatest total score whose predicted
    step seconds over the run fit ``limit_seconds``; with the predicted seconds and the search used. None when
    no plan fits."""
    n = len(scores)
    if k is not None and not 1 <= k <= n:
        raise ValueError(f"k={k}: a plan has 1..{n} layers")
    if len(model.lowest) != n:
        raise ConfigError(
            [
                Problem(
                    "costs.json",
                    f"profiled for {len(model.lowest)} layers, but the scores have {n}",
                    "re-run `actlora profile` for this model",
                )
            ]
        )
    if search == "auto":
        search = "exact" if n <= EXACT_UP_TO else "lowest-layer"
    sizes = [k] if k is not None else list(range(1, n + 1))
    best: tuple | None = None
    if search == "exact":
        for size in sizes:
            for layers in itertools.combinations(range(n), size):
                seconds = _run_seconds(model, layers[0], size, shape)
                if seconds <= limit_seconds:
                    key = _key(sum(scores[i] for i in layers), seconds, layers)
                    best = max(best, key) if best else key
    else:
        for lowest in range(n):
            above = sorted(range(lowest + 1, n), key=lambda i: (-scores[i], -i))  # ties: the higher layer
            for size in sizes:
                if size - 1 > len(above):
                    continue
                seconds = _run_seconds(model, lowest, size, shape)
                if seconds > limit_seconds:
                    continue
                layers = tuple(sorted([lowest, *above[: size - 1]]))
                key = _key(sum(scores[i] for i in layers), seconds, layers)
                best = max(best, key) if best else key
    if best is None:
        return None
    return list(best[2]), -best[1], search


def settings_differ(doc: dict[str, Any], cfg, device_type: str) -> list[str]:
    """The settings that shape a step in which ``costs.json`` and the run's config disagree: a prediction
    across them would compare other work."""
    t, lora = cfg.train, cfg.lora
    pairs = {
        "model": (doc["model"]["name"], cfg.model.name),
        "task": (doc.get("task", {}).get("name"), cfg.task.name),
        "task.max_length": (doc.get("task", {}).get("max_length"), cfg.task.max_length),
        "lora.method": (doc.get("method"), lora.method),
        "lora.r": (doc.get("lora_r"), lora.r),
        "lora.targets": (doc.get("targets"), lora.targets),
        "train.batch_size": (doc.get("batch_size"), t.batch_size),
        "train.grad_accum": (doc.get("grad_accum"), t.grad_accum),
        "train.group_by_length": (doc.get("group_by_length"), t.group_by_length),
        "train.precision": (doc.get("precision"), t.precision),
        # profile times steps without it; checkpointing adds a recomputed forward of the adapted span
        "train.gradient_checkpointing": (False, t.gradient_checkpointing),
        "device": (str(doc.get("device", "")).split(":")[0], device_type),
    }
    return [f"{key} {a} -> {b}" for key, (a, b) in pairs.items() if a != b]
