"""Ablation importance (the Act-LoRA paper's reference, section 7.5): from a run trained with LoRA on every
layer, switch off one layer's adapted projections at a time (each target, e.g. Q and V, and all of them:
"both") and record the drop of the task's first metric on its first evaluation split (task.eval_split, else
validation). Importance = |drop|, normalised by its maximum per part. -> ``<run>/ablation.json``.

Two readings of "ablate": ``adapter`` (the default) switches the layer's LoRA off, so it measures what the
adapter at that layer contributes; ``projection`` (the paper's words: "set their weights to zero") zeroes
the whole projection, base weights included, so it measures the layer's Q/V itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import artifacts, runfolder, ui
from .config import Config
from .data import encoded_split, eval_splits, task_spec
from .distributed import setup
from .errors import ArtifactError, Problem
from .evaluation import evaluate_metrics, load_trained


@contextlib.contextmanager
def switched_off(model, paths: list[str], mode: str = "adapter") -> Iterator[None]:
    """Inside the block, LoRA on the modules at ``paths`` contributes nothing (scaling 0); with
    mode='projection' their base weights (and bias) are zero too. Everything is restored after."""
    base = model.get_base_model()
    saved, weights = [], []
    for path in paths:
        layer = base.get_submodule(path)
        saved.append((layer, dict(layer.scaling)))
        for name in layer.scaling:
            layer.scaling[name] = 0.0
        if mode == "projection":
            inner = layer.get_base_layer()
            for param in (inner.weight, inner.bias):
                if param is not None:
                    weights.append((param, param.detach().clone()))
                    param.data.zero_()
    try:
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling.update(scaling)
        for param, value in weights:
            param.data.copy_(value)


@runfolder.exclusive
def run_ablation(cfg: Config, mode: str = "adapter") -> dict[str, Any]:
    """Metric drop per layer and part (each target, and 'both' = all targets) on the first evaluation split;
    writes ablation.json."""
    ctx = setup()
    spec = task_spec(cfg.task)
    loaded, model = load_trained(cfg, spec.num_labels, ctx)
    arch = loaded.arch
    summary = artifacts.read_artifact(
        cfg.run_dir / "train_summary.json", "train_summary", model_name=cfg.model.name
    )
    if summary.get("method", "lora") != "lora":
        raise ArtifactError(
            Problem(
                str(cfg.run_dir),
                f"the run trained {summary['method']}, not LoRA",
                "ablation switches LoRA adapters off: train with lora.method=lora",
            )
        )
    if summary["plan"]["layers"] != list(range(arch.num_layers)):
        raise ArtifactError(
            Problem(
                str(cfg.run_dir),
                f"the adapter covers layers {summary['plan']['layers']}, not every layer",
                "ablation needs LoRA on all layers: actlora train --k all (into its own output_dir)",
            )
        )
    split = eval_splits(cfg.task, spec)[0]
    data = encoded_split(loaded.tokenizer, cfg.task, spec, split)
    metric = spec.metrics[0]
    batch = cfg.train.eval_batch_size
    full = evaluate_metrics(model, data, spec, batch, ctx)[metric]
    targets = [t for t in cfg.lora.targets if t in arch.projections]
    if not targets:
        raise ArtifactError(
            Problem(
                "lora.targets",
                f"no logical projection among {cfg.lora.targets}",
                "ablation switches off q, k, v or o projections",
            )
        )
    parts = {**{t: [t] for t in targets}, "both": targets}
    drops: dict[str, list[float]] = {p: [] for p in parts}
    with ui.progress("ablation", arch.num_layers * len(parts)) as advance:
        for layer in range(arch.num_layers):
            for part, logical in parts.items():
                paths = [arch.projections[name][layer] for name in logical]
                with switched_off(model, paths, mode):
                    drops[part].append(full - evaluate_metrics(model, data, spec, batch, ctx)[metric])
                advance()
    importance = {}
    for part, values in drops.items():
        top = max(abs(v) for v in values)
        importance[part] = [abs(v) / top if top > 0 else 0.0 for v in values]
    doc = {
        "model": arch.identity(cfg.model.name),
        "task": {"name": spec.name, "split": split, "examples": len(data)},
        "metric": metric,
        "mode": mode,
        "full_metric": full,
        "drop": drops,
        "importance": importance,
    }
    return artifacts.finish_stage(cfg, "ablation", doc, ctx.is_main)
