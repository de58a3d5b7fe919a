"""The eval stage: base model + the run's adapter (or the fully fine-tuned model) -> GLUE metric(s), latency
and throughput -> eval.json.

Latency and throughput are measured at the eval batch size with the adapters unmerged (as the paper
measures: swapping adapters is the point of keeping them separate) and merged into the base weights.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from . import artifacts, metrics, runfolder, ui
from .checkpoints import last_checkpoint
from .config import Config, read_utf8
from .data import Encoded, TaskSpec, batch_indices, collate, encoded_split, eval_splits, shard, task_spec
from .distributed import Dist, setup
from .errors import ArtifactError, DataError, Problem
from .modeling import autocast_context, autocast_settings, load_for


def _gather(array: np.ndarray, ctx: Dist) -> list[np.ndarray]:
    if not ctx.enabled:
        return [array]
    import torch.distributed as dist

    parts: list[Any] = [None] * ctx.world
    dist.all_gather_object(parts, array)
    return parts


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    ctx: Dist,
    autocast: Callable = nullcontext,
    progress: str | None = None,
) -> np.ndarray:
    """Logits for every example in order; under DDP each rank scores its shard and the shards are gathered.
    Each rank runs its share longest first, so a batch pads little (the outputs go back to their examples).
    ``progress`` names a progress bar over rank 0's batches (none inside training's own bar)."""
    model.eval()
    order = list(range(len(data)))

    def share(rank: int) -> list[int]:
        return sorted(shard(order, rank, ctx.world), key=lambda i: -len(data.input_ids[i]))

    mine = share(ctx.rank)
    starts = range(0, len(mine), batch_size)
    outputs = []
    shown = ui.progress(progress, len(starts)) if progress else nullcontext(lambda *a, **k: None)
    with shown as advance:
        for start in starts:
            batch = collate(data, mine[start : start + batch_size])
            batch.pop("labels")
            with autocast():
                logits = model(**{k: v.to(ctx.device) for k, v in batch.items()}).logits
            outputs.append(logits.float().cpu().numpy())
            advance()
    local = np.concatenate(outputs) if outputs else np.zeros((0, 1), dtype=np.float32)
    logits = np.zeros((len(data), local.shape[1] if len(local) else 1), dtype=np.float32)
    for rank, part in enumerate(_gather(local, ctx)):
        logits[share(rank)] = part
    return logits


def evaluate_metrics(
    model: torch.nn.Module,
    data: Encoded,
    spec: TaskSpec,
    batch_size: int,
    ctx: Dist,
    autocast: Callable = nullcontext,
    progress: str | None = None,
) -> dict[str, float]:
    logits = predict(model, data, batch_size, ctx, autocast, progress)
    return metrics.evaluate(spec.metrics, logits, data.labels.numpy(), spec.is_regression)


@torch.inference_mode()
def time_inference(
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    device: torch.device,
    max_batches: int = 50,
    warmup: int = 2,
    autocast: Callable = nullcontext,
) -> dict[str, float]:
    """Per-example latency (p50, p90, mean over batches: batch time / batch size) and throughput."""
    model.eval()
    batches = batch_indices(len(data), batch_size, shuffle=False)[: max_batches + warmup]
    per_example, seconds, examples = [], 0.0, 0
    for n, indices in enumerate(batches):
        batch = collate(data, indices)
        batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast():
            model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if n >= warmup or len(batches) <= warmup:
            per_example.append(1000 * elapsed / len(indices))
            seconds += elapsed
            examples += len(indices)
    return {
        "latency_ms_p50": round(float(np.percentile(per_example, 50)), 4),
        "latency_ms_p90": round(float(np.percentile(per_example, 90)), 4),
        "latency_ms_mean": round(float(np.mean(per_example)), 4),
        "throughput_samples_per_s": round(examples / seconds, 3),
        "batches_timed": len(per_example),
    }


def load_trained(cfg: Config, num_labels: int, ctx: Dist):
    """The trained model: the config's base plus the run's adapter, as ``PeftModel.from_pretrained`` does, or,
    for full fine-tuning, the run's saved model (with the base's tokenizer)."""
    from peft import PeftModel

    full = cfg.lora.method == "full"
    weights = cfg.run_dir / ("model" if full else "adapter")
    marker = weights / ("config.json" if full else "adapter_config.json")
    if not marker.is_file():
        other = cfg.run_dir / ("adapter" if full else "model")
        hint = f"; {other} exists: was it trained with another lora.method?" if other.is_dir() else ""
        raise ArtifactError(
            Problem(
                str(weights),
                f"no trained {'model' if full else 'adapter'}{hint}",
                "run `actlora train` with this config first",
            )
        )
    summary_path = cfg.run_dir / "train_summary.json"
    if summary_path.is_file():
        summary = artifacts.read_artifact(summary_path, "train_summary", model_name=cfg.model.name)
        trained_with = summary.get("method", "lora")
        if trained_with != cfg.lora.method:
            raise ArtifactError(
                Problem(
                    str(summary_path),
                    f"the run was trained with lora.method={trained_with}, the config says {cfg.lora.method}",
                    "evaluate with the training config",
                )
            )
    check_weights(cfg, weights)
    if full:
        tuned = cfg.model.model_copy(update={"name": str(weights), "revision": None, "random_init": False})
        loaded = load_for(cfg.model, num_labels, ctx.device, model_cfg=tuned)  # the base's tokenizer
        return loaded, loaded.model.eval()
    loaded = load_for(cfg.model, num_labels, ctx.device)
    try:
        with warnings.catch_warnings():
            # peft >= 0.21 checks rank_pattern keys as module names; AdaLoRA's keys name its lora_E masks,
            # which peft applies on load all the same (the reload tests compare logits): a false alarm
            warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
            model = PeftModel.from_pretrained(loaded.model, str(weights)).to(ctx.device).eval()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        # files that read back but do not fit: another model's adapter (tensor shapes), a config peft rejects
        raise damaged(cfg, weights, f"{type(exc).__name__}: {_first_line(exc)}") from None
    return loaded, model


def id2label(spec: TaskSpec) -> dict[str, str] | None:
    """The task's class names by id, as artefacts record them (None: the classes are the ids)."""
    return None if spec.label_names is None else {str(i): n for i, n in enumerate(spec.label_names)}


def check_labels(cfg: Config, spec: TaskSpec) -> None:
    """The class names the adapter was trained with (its actlora.json) against the task's names now: a
    custom task's names come from its training split, and a training file whose labels changed since would
    silently rename the model's outputs."""
    path = cfg.run_dir / "adapter" / "actlora.json"
    if spec.label_names is None or cfg.lora.method == "full" or not path.is_file():
        return
    trained = json.loads(read_utf8(path)).get("id2label")
    now = id2label(spec)
    if trained is not None and trained != now:
        raise DataError(
            Problem(
                "task",
                f"the adapter in {path.parent} was trained with the labels {trained}; the task's training "
                f"split now gives {now}",
                "evaluate with the data it was trained on, or train again (`actlora train --overwrite`)",
            )
        )


def check_weights(cfg: Config, weights: Path) -> None:
    """Every JSON and safetensors file of the trained weights reads back, and an adapter config is a peft
    config; otherwise an ArtifactError naming the damaged file (peft and transformers would raise a
    JSONDecodeError, SafetensorError, KeyError or a hub-id validation error that names none)."""
    for path in sorted(weights.iterdir()):
        try:
            if path.suffix == ".json":
                doc = json.loads(read_utf8(path))
                if path.name == "adapter_config.json" and not (
                    isinstance(doc, dict) and isinstance(doc.get("peft_type"), str)
                ):
                    raise ValueError("not a peft adapter config (no peft_type)")
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
        except (OSError, ValueError, SafetensorError) as exc:  # decode errors (UTF-8, JSON) are ValueErrors
            raise damaged(cfg, path, f"{type(exc).__name__}: {_first_line(exc)}") from None


def damaged(cfg: Config, path: Path, reason: str) -> ArtifactError:
    """The error for trained weights that cannot be loaded, with the ways to get good ones back."""
    what = "model" if cfg.lora.method == "full" else "adapter"
    fix = "re-train it (`actlora train --overwrite` with the run's config)"
    last = last_checkpoint(cfg.run_dir / "checkpoints")
    if last is not None:
        where = last.relative_to(cfg.run_dir)
        fix += (
            f", or write it again from {where}: `actlora train --resume` with the flags it was trained with"
        )
    return ArtifactError(Problem(str(path), f"the trained {what} is damaged ({reason})", fix))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


@runfolder.exclusive
def run_eval(cfg: Config, timing_batches: int = 50) -> dict[str, Any]:
    """Metrics on the evaluation split(s), then latency/throughput unmerged and merged; writes eval.json."""
    ctx = setup()
    spec = task_spec(cfg.task)
    check_labels(cfg, spec)
    loaded, model = load_trained(cfg, spec.num_labels, ctx)
    # which weights were measured: compare refuses an eval.json whose weights are not the run's current ones
    weights_hash = artifacts.folder_hash(cfg.run_dir / ("model" if cfg.lora.method == "full" else "adapter"))
    # the precision training ran at (its epoch-end metrics were computed so): bf16 autocast on a bf16 GPU
    autocast = autocast_context(autocast_settings(cfg.train.precision, ctx.device)[0], ctx.device)
    splits = eval_splits(cfg.task, spec)
    data = {s: encoded_split(loaded.tokenizer, cfg.task, spec, s) for s in splits}
    results = {
        s: evaluate_metrics(model, d, spec, cfg.train.eval_batch_size, ctx, autocast, progress=f"eval {s}")
        for s, d in data.items()
    }
    first = data[splits[0]]
    timing = {}
    if ctx.is_main:
        with ui.progress("latency", 2) as advance:
            timing["unmerged"] = time_inference(
                model, first, cfg.train.eval_batch_size, ctx.device, timing_batches, autocast=autocast
            )
            advance()
            # a classifier answers after one forward: its time to first token is the latency of a single
            # request (batch 1), for a decoder (one prefill) and an encoder alike (the paper's Table 4 gives
            # TTFT for DeBERTa too)
            ttft = time_inference(model, first, 1, ctx.device, timing_batches, autocast=autocast)
            timing["time_to_first_token_ms_p50"] = ttft["latency_ms_p50"]
            timing["time_to_first_token_ms_p90"] = ttft["latency_ms_p90"]
            if cfg.lora.method == "full":
                timing["merged"] = {"skipped": "full fine-tuning has no adapter to merge"}
            elif cfg.model.quantization == "none":
                model.merge_adapter()
                timing["merged"] = time_inference(
                    model, first, cfg.train.eval_batch_size, ctx.device, timing_batches, autocast=autocast
                )
                merged = evaluate_metrics(
                    model, first, spec, cfg.train.eval_batch_size, Dist(0, 1, 0, ctx.device), autocast
                )
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message="Unmerge result can be inaccurate"
                    )  # IA3: unused after
                    model.unmerge_adapter()
                timing["merged_metrics_match"] = all(
                    abs(merged[k] - results[splits[0]][k]) < 1e-3 for k in merged
                )
            else:
                # merging into a 4-bit base re-quantises the weights: that is another model, not this one
                timing["merged"] = {"skipped": "adapters stay unmerged on a quantised base"}
            advance()
    doc = {
        "model": loaded.arch.identity(cfg.model.name),
        "task": {
            "name": spec.name,
            "splits": {s: len(d) for s, d in data.items()},
            "id2label": id2label(spec),
        },
        "metrics": results,
        "timing": timing,
        "batch_size": cfg.train.eval_batch_size,
        "device": str(ctx.device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "precision": cfg.train.precision,
        "weights_hash": weights_hash,
        "world_size": ctx.world,
    }
    return artifacts.finish_stage(cfg, "eval", doc, ctx.is_main)
