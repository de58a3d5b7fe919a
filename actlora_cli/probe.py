"""The probe stage: config -> per-layer scores -> ``<run>/scores.json``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from . import artifacts, runfolder, ui
from .config import Config
from .data import Encoded, batch_indices, collate, encoded_split, shard, task_spec
from .distributed import setup
from .errors import DataError, Problem
from .modeling import Loaded, load_for
from .scoring import SCORERS
from .scoring.regime import Inference, Training
from .selection import min_max, min_max_stderr
from .stopping import AutoStop


def probe_batches(
    data: Encoded, steps: int, batch_size: int, seed: int, world: int = 1
) -> Iterator[list[int]]:
    """S batches of indices, reshuffled (seed + pass) whenever the split runs out; a batch too small to give
    every rank a share is skipped."""
    produced, epoch = 0, 0  # the same global batches on every rank: each then takes its share
    while produced < steps:
        batches = batch_indices(len(data), batch_size, shuffle=True, seed=seed + epoch, min_size=world)
        if not batches:  # a pass without a batch would repeat forever
            raise DataError(
                Problem(
                    "task.train_split",
                    f"{len(data)} example(s) cannot make a probe batch for {world} process(es)",
                    "use a split with more examples, or fewer processes",
                )
            )
        for indices in batches:
            if produced == steps:
                return
            yield indices
            produced += 1
        epoch += 1


@runfolder.exclusive
def run_probe(cfg: Config, loaded: Loaded | None = None) -> dict[str, Any]:
    """Score every layer with the configured scorer and write ``scores.json``; returns the document.

    Under torchrun each rank scores its share of every probe batch and the statistics are summed across
    ranks, so every rank holds the scores one process would compute; rank 0 writes.
    """
    started = time.perf_counter()
    ctx = setup()
    spec = task_spec(cfg.task)
    loaded = loaded or load_for(cfg.model, spec.num_labels, ctx.device)
    data = encoded_split(loaded.tokenizer, cfg.task, spec, cfg.task.train_split)
    p = cfg.probe
    scorer = SCORERS[p.scorer]
    auto = p.steps == "auto"  # the config allows it for activation_norm only
    most = p.max_steps if auto else p.steps
    rule = AutoStop(cfg.rank, p.min_steps, p.max_steps) if auto else None
    if rule is not None and rule.nothing_to_resolve:
        ui.note(
            "note: probe.steps=auto resolves the plan for rank.k or rank.tau, and the config gives neither: "
            f"probing probe.max_steps={p.max_steps} batches"
        )
    with ui.progress(
        f"probe {p.scorer}"
        + (f"@{p.site}" if p.scorer == "activation_norm" else "")
        + (" (training regime)" if p.regime == "training" else ""),
        most,
    ) as advance:

        def batches():
            for indices in probe_batches(data, most, p.batch_size, p.seed, ctx.world):
                yield collate(data, shard(indices, ctx.rank, ctx.world))
                advance()

        def stop(means) -> bool:
            if not rule(means):
                return False
            advance(info="plan resolved")  # the batch just scored: batches() is not resumed after it
            return True

        more = {"stop": stop} if rule is not None else {}
        regime = Training(cfg, spec, data) if p.regime == "training" else Inference()
        stat = scorer(loaded.model, loaded.arch, batches(), cfg, loaded.device, regime=regime, **more)
    scores, flat = min_max(stat.raw)
    if flat:
        ui.warn("every layer has the same statistic; the ranking falls back to layer order")
    doc = {
        "scorer": p.scorer,
        "site": p.site if p.scorer == "activation_norm" else None,
        # inference: the frozen model; training: each batch an optimizer step of LoRA on every layer
        "regime": p.regime,
        "model": loaded.arch.identity(cfg.model.name),
        "task": {"name": spec.name, "split": cfg.task.train_split, "max_length": cfg.task.max_length},
        "steps": p.steps,  # as configured: a number, or "auto"
        "steps_used": stat.batches,
        "max_steps": most,
        # fixed: S batches as configured; auto: the plan was resolved, or the cap (max_steps) came first
        "stop_reason": "fixed" if rule is None else "resolved" if rule.resolved else "cap",
        # auto: the plan and its boundary at the last check of the stop rule (raw values)
        "stop_check": None if rule is None else rule.last,
        "batch_size": p.batch_size,
        "seed": p.seed,
        "batches_seen": stat.batches,
        "examples_seen": stat.examples,
        "tokens_seen": stat.tokens,
        "raw": stat.raw,
        "scores": scores,
        # per layer, the standard error over the S batches, raw and on the score's scale (activation norms)
        "raw_stderr": stat.raw_stderr,
        "score_stderr": min_max_stderr(stat.raw, stat.raw_stderr),
        # per batch and layer, the values raw averages: two layers' difference has a paired standard error
        "raw_per_batch": stat.per_batch,
        "flat": flat,
        # per projection (gradient scorers, weight delta): raw values and their min-max scores, per target;
        # null for the scorers that read one value per layer (activation norms, CKA)
        "raw_by_target": stat.by_target,
        "scores_by_target": None
        if stat.by_target is None
        else {t: min_max(values)[0] for t, values in stat.by_target.items()},
        "undefined_layers": [i for i, v in enumerate(stat.raw) if v is None],
        "device": str(loaded.device),
        "world_size": ctx.world,
        "timings": {
            "load_s": round(loaded.seconds, 4),
            "probe_s": round(stat.forward_seconds, 4),
            "per_batch_ms": round(1000 * stat.forward_seconds / max(stat.batches, 1), 3),
            "total_s": round(time.perf_counter() - started, 4),
        },
    }
    doc = artifacts.finish_stage(cfg, "scores", doc, ctx.is_main)
    if ctx.is_main:  # a look at the profile beside the numbers (after them: the plot is derived)
        from .analysis.plots import plot_layer_scores

        site = f"@{p.site}" if p.scorer == "activation_norm" else ""
        title = f"{p.scorer}{site}: {cfg.model.name}, {spec.name}, S={stat.batches}"
        title += " (bars: 2 standard errors)" if doc["score_stderr"] else ""
        plot_layer_scores(scores, [], cfg.run_dir / "scores.png", title, doc["score_stderr"])
    return doc
