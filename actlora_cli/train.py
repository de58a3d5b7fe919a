"""The train stage: LoRA (or another method, see adapters.py) on the layer plan, a plain AdamW loop, cost accounting per step, PEFT-format
checkpoints and exact resume.

``run_train`` reads top to bottom: plan -> model -> data -> optimizer -> loop -> summary. Under torchrun
the same function runs on every rank (DDP wraps the model after the plan is applied); rank 0 writes.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import artifacts, ui
from .adapters import Adapted, adapted_layers, apply_method, count_parameters
from .config import Config
from .data import batch_indices, collate, encoded_split, eval_splits, shard, task_spec, to_device
from .distributed import Dist, all_reduce_sum, barrier, same_on_all_ranks, setup
from .errors import ActloraError, ArtifactError, ConfigError, Problem
from .evaluation import evaluate_metrics
from .modeling import autocast_context, autocast_settings, load_for
from .prefix_cache import PrefixCache, disable_prefix_dropout, trained_in_prefix
from .rank import resolve_plan


class NonFiniteLoss(ActloraError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------
# Pieces of the loop


def compute_loss(
    logits: torch.Tensor, labels: torch.Tensor, regression: bool, reduction: str = "mean"
) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels, reduction=reduction)


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up reaching the peak at step ``warmup_steps`` (once), then linear decay towards zero:
    the last step runs at peak / (total - warmup)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class PhaseTimer:
    """Step phases timed with CUDA events on GPU (no mid-step sync), a synchronous clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[Any] = []

    def start(self) -> None:
        self.marks = []
        self.mark()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def memory(self, peak: bool = False) -> float | None:
        if not self.cuda:
            return None
        fn = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
        return round(fn(self.device) / 2**20, 1)

    def durations_ms(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [1000 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(
    folder: Path, adapted: Adapted, optimizer, scheduler, scaler, step: int, extra: dict
) -> None:
    """Adapter + head in PEFT's format (the whole model for full fine-tuning), and the loop state; written
    beside and swapped in, so a crash mid-save leaves the previous checkpoint whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    adapted.save(tmp / adapted.weights_dir)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "method_state": adapted.extra_state(),
            **extra,
        },
        tmp / "state.pt",
    )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The last complete checkpoint: ``last``, or ``last.old`` when a crash came between the two renames."""
    for name in ("last", "last.old"):
        if (ckpt_dir / name / "state.pt").is_file():
            return ckpt_dir / name
    return None


# ---------------------------------------------------------------------------------------------------------
# The loop


def run_train(cfg: Config, rule_from_flags: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train lora.method on the plan; write adapter/ (model/ for full fine-tuning), checkpoints/,
    train_log.jsonl and train_summary.json."""
    started = time.perf_counter()
    ctx: Dist = setup()
    t = cfg.train
    spec = task_spec(cfg.task)
    seed_everything(t.seed)

    loaded = load_for(cfg.model, spec.num_labels, ctx.device)
    plan, plan_source = resolve_plan(cfg, loaded.arch.num_layers, rule_from_flags)
    ranks_agreeing = same_on_all_ranks(plan.layers, "the layer plan")
    train_data = encoded_split(loaded.tokenizer, cfg.task, spec, cfg.task.train_split)
    eval_data = {
        split: encoded_split(loaded.tokenizer, cfg.task, spec, split) for split in eval_splits(cfg.task, spec)
    }
    # every rank must get a share of every micro-batch: a final batch smaller than world x grad_accum is dropped,
    # and the epoch is counted with the same rule (a count that disagreed would never finish the epoch)
    min_batch = ctx.world * t.grad_accum
    steps_per_epoch = len(batch_indices(len(train_data), t.batch_size, shuffle=False, min_size=min_batch))
    if steps_per_epoch == 0:
        raise ConfigError(
            [
                Problem(
                    "train.batch_size",
                    f"{len(train_data)} training examples cannot fill one step of {min_batch} "
                    f"(world size {ctx.world} x grad_accum {t.grad_accum})",
                    "use more examples or fewer ranks",
                )
            ]
        )
    total_steps = math.ceil(t.epochs * steps_per_epoch)
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    adapted = apply_method(loaded.model, loaded.arch, cfg.lora, plan.layers, total_steps)
    model = adapted.model
    assert adapted_layers(model, loaded.arch) == sorted(plan.layers), (
        f"{cfg.lora.method} landed outside the plan"
    )
    trainable, total = count_parameters(model)
    amp_dtype, needs_scaler = autocast_settings(t.precision, ctx.device)
    base_dtype = next(
        (p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()), None
    )
    if amp_dtype is None and base_dtype in (torch.float16, torch.bfloat16):
        raise ConfigError(
            [
                Problem(
                    "train.precision",
                    f"fp32 training on a {str(base_dtype).replace('torch.', '')} model",
                    "set train.precision=bf16 (or fp16), or model.dtype=float32",
                )
            ]
        )
    # the frozen prefix: embeddings and the layers below the lowest trained layer (past the backward cut)
    lowest = min(plan.layers)
    frozen_dropout = t.frozen_dropout and t.prefix_cache == "off"
    prefix = {
        "lowest_trained_layer": lowest,
        "dropout": frozen_dropout,
        "dropout_rates_zeroed": 0 if frozen_dropout else disable_prefix_dropout(model, loaded.arch, lowest),
    }
    cache = None
    if t.prefix_cache != "off":
        trained = trained_in_prefix(model, loaded.arch, lowest)
        if trained:
            raise ConfigError(
                [
                    Problem(
                        "train.prefix_cache",
                        f"the frozen prefix is not frozen: {trained[0]} is trained "
                        f"({cfg.lora.method} on layers {plan.layers}), so its output changes and cannot be cached",
                        "use a plan that leaves the embeddings and the lowest layers frozen, or train.prefix_cache=off",
                    )
                ]
            )
        if lowest == 0 and ctx.is_main:
            ui.note(
                "[yellow]note:[/] the plan includes layer 0, so the prefix cache skips only the embeddings"
            )
        cache_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
            t.prefix_cache_dtype, amp_dtype or torch.float32
        )
        cache = PrefixCache(
            model,
            loaded.arch,
            lowest,
            train_data.lengths,
            cache_dtype,
            t.prefix_cache,
            cfg.run_dir / f"prefix_cache.rank{ctx.rank}.bin",
            pin=ctx.device.type == "cuda",
        )
    ddp_model = model
    if ctx.enabled:
        # the plan is fixed before wrapping; every trainable parameter is used every step
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=False,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=t.lr, weight_decay=t.weight_decay, **({"fused": True} if ctx.device.type == "cuda" else {})
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, round(t.warmup_ratio * total_steps))
    )
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    autocast = autocast_context(amp_dtype, ctx.device)

    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    log_path = run_dir / "train_log.jsonl"
    step = 0
    meta = {
        "plan": plan.layers,
        "method": cfg.lora.method,
        "world": ctx.world,
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "model": cfg.model.name,
    }
    totals = {
        "train_seconds": 0.0,
        "samples": 0,
        "phase_ms": [0.0, 0.0, 0.0],
        "steps_timed": 0,
        "history": [],
        "peak_mib": 0.0,
    }
    if resume:
        last = last_checkpoint(ckpt_dir)
        if last is None:
            raise ArtifactError(
                Problem(
                    str(ckpt_dir / "last"), "no checkpoint to resume from", "drop --resume to start afresh"
                )
            )
        state = torch.load(last / "state.pt", map_location="cpu", weights_only=False)
        differs = {
            k: (state.get("meta", {}).get(k), v) for k, v in meta.items() if state.get("meta", {}).get(k) != v
        }
        if differs:
            raise ArtifactError(
                Problem(
                    str(last),
                    "the checkpoint was made by a different run: "
                    + ", ".join(f"{k} {was} -> {now}" for k, (was, now) in differs.items()),
                    "resume with the settings it was made with, or drop --resume to start afresh",
                )
            )
        adapted.load_weights(last / adapted.weights_dir)
        adapted.load_extra_state(state.get("method_state", {}))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = state["step"]
        totals = state["totals"]
        if ctx.is_main and log_path.is_file():
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            artifacts.atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        ui.note(f"resumed from {last} at step {step}")
    elif ctx.is_main:
        # a fresh run: nothing of an earlier run in this folder may be resumed or mistaken for this one's
        log_path.unlink(missing_ok=True)
        for stale in (ckpt_dir, run_dir / "adapter", run_dir / "model"):
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    if ctx.is_main:
        artifacts.write_resolved(cfg)
        ui.note(
            f"{adapted.describe(cfg.lora)} (from {plan_source}); "
            f"trainable {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)"
        )

    timer = PhaseTimer(ctx.device)
    phase_totals = np.array(totals["phase_ms"])
    samples_done, steps_timed, peak_mib = totals["samples"], totals["steps_timed"], totals["peak_mib"]
    history: list[dict[str, Any]] = totals["history"]
    loop_start = time.perf_counter() - totals["train_seconds"]
    log = log_path.open("a") if ctx.is_main else None
    ddp_model.train()
    with ui.progress("train", total_steps) as advance:
        advance(step)
        while step < total_steps:
            epoch = step // steps_per_epoch
            batches = batch_indices(
                len(train_data),
                t.batch_size,
                shuffle=True,
                seed=t.seed + epoch,
                lengths=train_data.lengths if t.group_by_length else None,
                min_size=min_batch,
            )
            for global_batch in batches[step - epoch * steps_per_epoch :]:
                # grad_accum micro-batches of near-equal size, each with at least one example per rank;
                # collated before the clock starts, so the phases time the model, not the padding loop
                chunks = [global_batch[i :: t.grad_accum] for i in range(t.grad_accum)]
                rows = [shard(c, ctx.rank, ctx.world) for c in chunks]
                micro_batches = [to_device(collate(train_data, r), ctx.device) for r in rows]
                timer.start()
                loss_sum = torch.zeros((), device=ctx.device)
                extra = None  # a method's own loss term (AdaLoRA), logged apart from the task loss
                for i, batch in enumerate(micro_batches):
                    labels = batch.pop("labels")
                    # gradient sync only on the last micro-batch of the step
                    sync = ctx.enabled and i < len(chunks) - 1
                    with ddp_model.no_sync() if sync else nullcontext():
                        with autocast(), cache.around(rows[i]) if cache else nullcontext():
                            logits = ddp_model(**batch).logits
                        # sum over this rank's share, scaled so that DDP's average over ranks is the mean over
                        # the global batch whatever the shares' sizes (a per-rank mean would weight them unequally)
                        loss = compute_loss(logits, labels, spec.is_regression, "sum") * (
                            ctx.world / len(global_batch)
                        )
                        loss_sum += loss.detach()
                        if i == len(chunks) - 1:
                            # once per step, with the last micro-batch (DDP averages it over ranks: the same term)
                            extra = adapted.regularizer()
                            if extra is not None:
                                loss = loss + extra
                        timer.mark()
                        if i == 0:
                            mem_fwd = timer.memory()
                        (scaler.scale(loss) if scaler else loss).backward()
                        timer.mark()
                mem_bwd = timer.memory(peak=True)
                if mem_bwd is not None:
                    peak_mib = max(
                        peak_mib, mem_bwd
                    )  # peak stats are reset each step: keep the run's maximum
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if t.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                # one host sync for both: the task loss summed over ranks, the method's term (the same on each)
                if extra is None:
                    loss_value, extra_value = float(all_reduce_sum(loss_sum)) / ctx.world, None
                else:
                    loss_value, extra_value = torch.stack(
                        [all_reduce_sum(loss_sum) / ctx.world, extra.detach()]
                    ).tolist()
                if not math.isfinite(loss_value + (extra_value or 0.0)):
                    raise NonFiniteLoss(
                        Problem(
                            f"step {step + 1}",
                            f"the loss is {loss_value}"
                            + ("" if extra_value is None else f" (+ {extra_value})"),
                            f"the last good checkpoint is kept in {ckpt_dir / 'last'}; lower train.lr or use "
                            "train.precision=fp32/bf16, then `actlora train --resume`",
                        )
                    )
                lr_used = optimizer.param_groups[0]["lr"]
                stepped = True
                if scaler is not None:
                    # reading the scale syncs the host: only when a method's step hook needs to know
                    scale = scaler.get_scale() if adapted.has_step_hook else None
                    scaler.step(optimizer)
                    scaler.update()
                    stepped = (
                        scale is None or scaler.get_scale() >= scale
                    )  # it drops when inf grads skip the step
                else:
                    optimizer.step()
                if stepped:  # AdaLoRA's importance must not average in a skipped step's inf gradients
                    adapted.after_optimizer_step(step)  # needs the gradients: before zero_grad
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                timer.mark()
                step += 1
                steps_timed += 1
                durations = timer.durations_ms()
                fwd_ms = sum(durations[0:-1:2])  # marks: start, fwd, bwd, fwd, bwd, ..., opt
                bwd_ms = sum(durations[1:-1:2])
                opt_ms = durations[-1]
                phase_totals += (fwd_ms, bwd_ms, opt_ms)
                samples_done += len(global_batch)
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": loss_value,
                    **({} if extra_value is None else {"regularizer": extra_value}),
                    "lr": lr_used,
                    "forward_ms": round(fwd_ms, 3),
                    "backward_ms": round(bwd_ms, 3),
                    "optimizer_ms": round(opt_ms, 3),
                    "samples": len(global_batch),
                    "mem_after_forward_mib": mem_fwd,
                    "mem_peak_backward_mib": mem_bwd,
                    "mem_after_step_mib": timer.memory(),
                }
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                rate = samples_done / (time.perf_counter() - loop_start)
                advance(1, info=f"loss {loss_value:.4f}  {rate:.1f} samples/s")
                epoch_done = step % steps_per_epoch == 0 or step == total_steps
                if epoch_done:
                    metrics = {
                        split: evaluate_metrics(model, data, spec, t.eval_batch_size, ctx, autocast)
                        for split, data in eval_data.items()
                    }
                    ddp_model.train()
                    history.append(
                        {"step": step, "epoch": round(step / steps_per_epoch, 4), "metrics": metrics}
                    )
                if epoch_done or (t.save_every is not None and step % t.save_every == 0):
                    if ctx.is_main:
                        totals = {
                            "train_seconds": time.perf_counter() - loop_start,
                            "samples": samples_done,
                            "phase_ms": phase_totals.tolist(),
                            "steps_timed": steps_timed,
                            "history": history,
                            "peak_mib": peak_mib,
                        }
                        save_checkpoint(
                            ckpt_dir / "last",
                            adapted,
                            optimizer,
                            scheduler,
                            scaler,
                            step,
                            {"meta": meta, "totals": totals},
                        )
                    barrier()
                if epoch_done and ctx.is_main:
                    shutil.copytree(
                        ckpt_dir / "last" / adapted.weights_dir, ckpt_dir / f"step-{step}", dirs_exist_ok=True
                    )
                    shown = ", ".join(
                        f"{s}: " + " ".join(f"{k} {v:.4f}" for k, v in m.items()) for s, m in metrics.items()
                    )
                    ui.note(f"step {step} (epoch {step / steps_per_epoch:.2f}): {shown}")
                if step >= total_steps:
                    break
    if log is not None:
        log.close()
    train_seconds = time.perf_counter() - loop_start
    if cache is not None:
        prefix["cache"] = {"store": t.prefix_cache, **cache.report()}
        cache.close()

    if ctx.is_main:
        adapted.save(run_dir / adapted.weights_dir)
    barrier()
    steps_run = max(1, steps_timed)
    summary = {
        "model": loaded.arch.identity(cfg.model.name),
        "task": {"name": spec.name, "train_examples": len(train_data)},
        "plan": {
            "layers": plan.layers,
            "k": plan.k,
            "tau": plan.tau,
            "rule": plan.rule,
            "source": plan_source,
            "ranks_agreeing": ranks_agreeing,
        },
        "method": cfg.lora.method,
        "method_settings": adapted.settings,
        "lora": cfg.lora.model_dump(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total,
        "steps": step,
        "epochs": round(step / steps_per_epoch, 4),
        "final_metrics": history[-1]["metrics"] if history else {},
        "history": history,
        "frozen_prefix": prefix,
        "mean_step_ms": {
            name: round(v / steps_run, 3)
            for name, v in zip(("forward", "backward", "optimizer"), phase_totals)
        },
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(samples_done / train_seconds, 3) if train_seconds else None,
        "device": str(ctx.device),
        "world_size": ctx.world,
        "device_hours": round(train_seconds * ctx.world / 3600, 6),
        "peak_memory_mib": peak_mib if ctx.device.type == "cuda" else None,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "wall_seconds": round(time.perf_counter() - started, 3),
        "provenance": artifacts.provenance(cfg.hash()),
    }
    if ctx.is_main:
        summary = artifacts.write_artifact(run_dir / "train_summary.json", "train_summary", summary)
    barrier()  # every rank ends together (see run_eval)
    return summary
