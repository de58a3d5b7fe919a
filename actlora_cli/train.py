"""The train stage: LoRA (or another method, see adapters.py) on the layer plan, a plain AdamW loop, cost
accounting per step, PEFT-format checkpoints and exact resume.

``run_train`` reads top to bottom: set up (model, plan, data, method, optimizer), resume or start, the loop
(``train_step`` per optimizer step, a log line, epoch-end evaluation and checkpoint; Ctrl-C stops it after
a whole step with a checkpoint, see interrupt.py), the kept weights (the last or the best), the summary. Under
torchrun the same function runs on every rank (DDP wraps the model after the plan is applied); rank 0 writes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import artifacts, costmodel, model_card, runfolder, tracking, ui
from .adapters import Adapted, adapted_layers, apply_method, count_parameters
from .checkpoints import last_checkpoint, load_state, save_checkpoint, seed_everything, set_rng_state
from .config import Config, TrainSection
from .data import (
    Encoded,
    TaskSpec,
    batch_indices,
    collate,
    encoded_split,
    eval_splits,
    shard,
    task_spec,
    to_device,
)
from .distributed import Dist, all_reduce_sum, barrier, same_on_all_ranks, setup
from .errors import ActloraError, ArtifactError, ConfigError, Problem
from .evaluation import id2label, predict
from .interrupt import stop_at_step_end
from .losses import compute_loss
from .metrics import evaluate as compute_metrics
from .modeling import Architecture, autocast_context, autocast_settings, checkpoint_layers, load_for
from .prefix_cache import PrefixCache, frozen_prefix
from .rank import resolve_plan
from .selection import Plan, every_layer
from .timing import HostLoad, PhaseTimer


class NonFiniteLoss(ActloraError):
    """The loss became NaN or inf; the last good checkpoint is kept."""

    exit_code = 3  # diverged: not bad input, so a script can retry with another lr or precision


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up reaching the peak at step ``warmup_steps`` (once), then linear decay towards zero:
    the last step runs at peak / (total - warmup)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """train.scheduler: ``linear`` (lr_lambda above), or transformers' ``cosine`` / ``constant_with_warmup``
    (half a cosine from the peak to zero after the warm-up / the peak held after it)."""
    if name == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup_steps))
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


# ---------------------------------------------------------------------------------------------------------
# What the loop works with and what it accumulates


@dataclass
class Run:
    """Everything the loop needs, built once by ``setup_run``."""

    cfg: Config
    ctx: Dist
    spec: TaskSpec
    arch: Architecture
    plan: Plan
    ranks_agreeing: int
    train_data: Encoded
    eval_data: dict[str, Encoded]
    steps_per_epoch: int
    total_steps: int
    adapted: Adapted
    ddp_model: torch.nn.Module  # the model itself in one process, its DDP wrapper under torchrun
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 on CUDA only
    amp_dtype: torch.dtype | None
    autocast: Callable
    cache: PrefixCache | None
    prefix: dict[str, Any]  # the frozen prefix's record for the summary
    prep_seconds: dict[str, float]  # this invocation's model loading and data preparation
    trainable: int
    total: int
    tracker: tracking.Tracking  # train.report_to's trackers (none on ranks other than 0)
    checkpointed: list[int]  # layers recomputed in the backward (train.gradient_checkpointing)
    tokenizer: Any = None  # saved beside the adapter (model_card.complete)

    @property
    def model(self) -> torch.nn.Module:
        return self.adapted.model

    @property
    def ckpt_dir(self) -> Path:
        return self.cfg.run_dir / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.cfg.run_dir / "train_log.jsonl"

    def meta(self) -> dict[str, Any]:
        """What a checkpoint must share with the run resuming it: the plan, the world size, and every setting
        that changes what is learned (``training_settings``)."""
        t = self.cfg.train
        return {
            "plan": self.plan.layers,
            "method": self.cfg.lora.method,
            "world": self.ctx.world,
            "batch_size": t.batch_size,
            "grad_accum": t.grad_accum,
            "model": self.cfg.model.name,
            "settings": training_settings(self.cfg),
        }


@dataclass
class StepResult:
    loss: float  # the task loss, mean over the global batch
    regularizer: float | None  # a method's own term (AdaLoRA), logged apart so loss curves compare
    lr: float  # the rate the step ran with
    phases_ms: tuple[float, float, float]  # forward, backward, optimizer
    memory_mib: tuple[float | None, float | None, float | None]  # after forward, backward peak, after step
    samples: int


@dataclass
class Totals:
    """The loop's running totals; saved in every checkpoint, so a resumed run's summary covers the whole
    run."""

    train_seconds: float = 0.0  # the loop's wall time, evaluations and checkpoints included
    eval_seconds: float = 0.0  # of which epoch-end evaluation
    checkpoint_seconds: float = 0.0  # and of which checkpoint saving
    samples: int = 0
    phase_ms: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # forward, backward, optimizer
    steps_timed: int = 0
    peak_mib: float = 0.0  # CUDA: the largest per-step peak (the counter is reset every step)
    history: list[dict[str, Any]] = field(default_factory=list)  # validation metrics at each epoch end
    best: dict[str, Any] | None = None  # the best evaluation so far: step, metric name, value
    stale: int = 0  # evaluations since the best
    stopped_early: dict[str, Any] | None = None

    def add(self, result: StepResult) -> None:
        self.samples += result.samples
        self.steps_timed += 1
        self.phase_ms = [a + b for a, b in zip(self.phase_ms, result.phases_ms, strict=True)]
        if result.memory_mib[1] is not None:
            self.peak_mib = max(self.peak_mib, result.memory_mib[1])


# ---------------------------------------------------------------------------------------------------------
# Set up, resume


def setup_run(cfg: Config, plan: Plan | None) -> Run:
    """Model, plan, data, step count, method, precision, frozen prefix, DDP, optimizer, scheduler, scaler."""
    ctx = setup()
    tracker = tracking.Tracking(cfg, ctx.is_main)  # a tracker's missing package, before the model loads
    t = cfg.train
    spec = task_spec(cfg.task)
    seed_everything(t.seed)  # before the model: a new head and the adapters draw their initial weights
    loaded = load_for(cfg.model, spec.num_labels, ctx.device)
    data_started = time.perf_counter()
    if plan is None:
        plan = resolve_plan(cfg, loaded.arch.num_layers)  # checked against the model there
    else:
        plan.check_fits(loaded.arch.num_layers, plan.source or "the layer plan")
    # different plans would train different parameters on different ranks: checked before anything is wrapped
    ranks_agreeing = same_on_all_ranks(plan.layers, "the layer plan")
    train_data = encoded_split(loaded.tokenizer, cfg.task, spec, cfg.task.train_split)
    eval_data = {s: encoded_split(loaded.tokenizer, cfg.task, spec, s) for s in eval_splits(cfg.task, spec)}
    prep = {"load_seconds": loaded.seconds, "data_seconds": time.perf_counter() - data_started}
    steps_per_epoch = count_steps_per_epoch(len(train_data), t.batch_size, ctx.world * t.grad_accum)
    total_steps = math.ceil(t.epochs * steps_per_epoch)
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    # the method's schedule (AdaLoRA's) is a share of the run's steps, so the step count comes first
    adapted = apply_method(loaded.model, loaded.arch, cfg.lora, plan.layers, total_steps)
    model = adapted.model
    assert adapted_layers(model, loaded.arch) == sorted(plan.layers), (
        f"{cfg.lora.method} landed outside the plan"
    )
    trainable, total = count_parameters(model)
    amp_dtype, needs_scaler = autocast_settings(t.precision, ctx.device)
    check_precision(model, amp_dtype)
    cache, prefix = frozen_prefix(
        model, loaded.arch, plan.layers, t, train_data.lengths, amp_dtype,
        cfg.run_dir / f"prefix_cache.rank{ctx.rank}.bin", ctx.device, cfg.lora.method,
    )  # fmt: skip
    # after the method is applied: peft makes the inputs require grad when it wraps a checkpointing model
    checkpointed = checkpoint_layers(model, loaded.arch, min(plan.layers)) if t.gradient_checkpointing else []
    ddp_model, params, optimizer = optimization(model, t, ctx)
    warmup = round(t.warmup_ratio * total_steps)
    scheduler = make_scheduler(t.scheduler, optimizer, total_steps, warmup)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    return Run(
        cfg, ctx, spec, loaded.arch, plan, ranks_agreeing, train_data, eval_data, steps_per_epoch,
        total_steps, adapted, ddp_model, params, optimizer, scheduler, scaler, amp_dtype,
        autocast_context(amp_dtype, ctx.device), cache, prefix, prep, trainable, total, tracker, checkpointed,
        loaded.tokenizer,
    )  # fmt: skip


def optimization(
    model: torch.nn.Module, t: TrainSection, ctx: Dist, read_only: list[torch.nn.Parameter] = ()
) -> tuple[torch.nn.Module, list[torch.nn.Parameter], torch.optim.Optimizer]:
    """The DDP wrapper (the model itself in one process), the trained parameters and their AdamW. Parameters
    in ``read_only`` require grad (DDP all-reduces their gradients too) but are not trained: the probe's
    training regime reads the projections' gradients that way (probe.regime=training)."""
    ddp_model = model
    if ctx.enabled:
        # every trainable parameter is used in every step, so DDP need not search for unused ones
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=False
        )
    skip = {id(p) for p in read_only}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    # fused AdamW: one kernel for every parameter on CUDA (no such kernel on CPU)
    fused = {"fused": True} if ctx.device.type == "cuda" else {}
    return ddp_model, params, torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)


def probe_run(
    cfg: Config,
    ctx: Dist,
    spec: TaskSpec,
    arch: Architecture,
    adapted: Adapted,
    data: Encoded,
    read_only: list[torch.nn.Parameter],
    steps: int,
) -> Run:
    """The Run of the probe's training regime (probe.regime=training): ``adapted`` (LoRA on every layer) is
    trained by ``step_on`` as in ``actlora train`` (train.precision, weight_decay, max_grad_norm), at a
    constant train.lr for the ``steps`` probe batches; no evaluation, checkpoint or frozen prefix.
    ``read_only`` (the projections the gradient scorers read) must already require grad."""
    t = cfg.train
    amp_dtype, needs_scaler = autocast_settings(t.precision, ctx.device)
    check_precision(adapted.model, amp_dtype)
    ddp_model, params, optimizer = optimization(adapted.model, t, ctx, read_only)
    scheduler = make_scheduler("constant_with_warmup", optimizer, steps, 0)  # train.lr throughout
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in adapted.model.parameters())
    return Run(
        cfg, ctx, spec, arch, every_layer(arch.num_layers), ctx.world, data, {}, steps, steps, adapted,
        ddp_model, params, optimizer, scheduler, scaler, amp_dtype, autocast_context(amp_dtype, ctx.device),
        None, {}, {}, trainable, total, tracking.Tracking.off(), [],
    )  # fmt: skip


def count_steps_per_epoch(examples: int, batch_size: int, min_batch: int) -> int:
    """Optimizer steps in one epoch. Every rank must get a share of every micro-batch, so a final batch
    smaller than world x grad_accum is dropped, and the epoch is counted with the same rule (a count that
    disagreed would never finish the epoch)."""
    steps = len(batch_indices(examples, batch_size, shuffle=False, min_size=min_batch))
    if steps == 0:
        raise ConfigError([Problem(
            "train.batch_size",
            f"{examples} training examples cannot fill one step of {min_batch} (world size x grad_accum)",
            "use more examples or fewer ranks",
        )])  # fmt: skip
    return steps


def check_precision(model: torch.nn.Module, amp_dtype: torch.dtype | None) -> None:
    """fp32 training needs fp32 weights: AdamW updates on a 16-bit base would lose most of each update."""
    base = next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()), None)
    if amp_dtype is None and base in (torch.float16, torch.bfloat16):
        raise ConfigError([Problem(
            "train.precision",
            f"fp32 training on a {str(base).replace('torch.', '')} model",
            "set train.precision=bf16 (or fp16), or model.dtype=fp32",
        )])  # fmt: skip


# A run's outputs in its folder: what a fresh run replaces (only with --overwrite) and resume continues. The
# MLflow and W&B stores (mlflow.db, wandb/) hold every run made there, each apart, so they stay.
OUTPUTS = (
    "adapter", "model", "checkpoints", "train_log.jsonl", "predictions.json", "train_summary.json",
    "eval.json", "tensorboard",
)  # fmt: skip

# Settings that do not change what a run learns, so a resume may differ in them: where it is written, the
# probe (the plan itself is compared), when it stops or saves, how it is evaluated, and where it reports.
# Gradient checkpointing recomputes the same forward with the same dropout draws (torch restores the RNG for
# the recomputation), so a run that ran out of memory may resume with it on.
RESUMABLE_CHANGES = ("output_dir", "probe.", "rank.", "train.max_steps", "train.save_every",
                     "train.eval_batch_size", "train.logging_steps", "train.eval_steps", "train.patience",
                     "train.save_total_limit", "train.report_to", "train.run_name",
                     "train.gradient_checkpointing", "task.max_eval_examples",
                     "task.eval_split")  # fmt: skip


def training_settings(cfg: Config) -> dict[str, Any]:
    """The resolved config as dotted keys, less the settings a resume may change."""
    return {k: v for k, v in cfg.flat().items() if not k.startswith(RESUMABLE_CHANGES)}


def check_outputs(cfg: Config, resume: bool, overwrite: bool) -> list[str]:
    """Before any work: refuse to train over an earlier run unless --overwrite (or --resume) says so, and
    refuse outputs that are links out of the run folder. Returns the earlier run's outputs that a fresh run
    replaces."""
    run_dir = cfg.run_dir
    present = [n for n in OUTPUTS if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    for path in [*(run_dir / n for n in present), *run_dir.glob("prefix_cache.rank*.bin")]:
        runfolder.inside(path, run_dir)  # nothing is written through a link planted in the run folder
    if resume or not present:
        return []
    if not overwrite:
        finished = "train_summary.json" in present
        last = last_checkpoint(run_dir / "checkpoints")
        what = (
            "a finished run is here (train_summary.json)" if finished
            else f"an unfinished run is here (its last checkpoint is {last})" if last
            else f"an earlier run's outputs are here ({', '.join(present)})"
        )  # fmt: skip
        fix = "--overwrite replaces it (set aside until the new run finishes)"
        fix += "; --resume continues it" if last and not finished else "; or give this run another output_dir"
        raise ConfigError([Problem(str(run_dir), what, fix)])
    return present


def set_aside(cfg: Config, ctx: Dist, outputs: list[str]) -> Path | None:
    """Move an earlier run's outputs into .replaced/ (rank 0), once the new run is set up (everything that can
    be refused has been), so a refused run leaves the earlier one where it was."""
    if not outputs:
        return None
    aside = runfolder.set_aside(cfg.run_dir, outputs) if ctx.is_main else None
    barrier()
    ui.note(f"the earlier run is set aside in {cfg.run_dir / runfolder.REPLACED} until this one finishes")
    return aside


def resume_from(run: Run) -> tuple[int, Totals]:
    """The step to continue from and the totals so far, with weights, optimizer, scheduler, scaler, RNG and
    the method's state restored from the last checkpoint, after checking it was made by this run's
    settings."""
    ckpt_dir = run.ckpt_dir
    last = last_checkpoint(ckpt_dir)
    if last is None:
        raise ArtifactError(
            Problem(str(ckpt_dir / "last"), "no checkpoint to resume from", "drop --resume to start afresh")
        )
    state = load_state(last)
    was, now = state.get("meta", {}), run.meta()
    differs = [f"{k} {was.get(k)} -> {v}" for k, v in now.items() if k != "settings" and was.get(k) != v]
    if "settings" in was:  # checkpoints from before settings were recorded are checked on the rest only
        old, new = was["settings"], now["settings"]
        keys = sorted(old.keys() | new.keys())
        differs += [f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
    if differs:
        raise ArtifactError(Problem(
            str(last),
            "the checkpoint was made by a different run: " + ", ".join(differs),
            "resume with the settings it was made with, or start afresh with --overwrite",
        ))  # fmt: skip
    try:
        run.adapted.load_weights(last / run.adapted.weights_dir)
    except Exception as exc:  # noqa: BLE001 (peft and safetensors raise many types for a damaged file)
        raise ArtifactError(Problem(
            str(last / run.adapted.weights_dir),
            f"cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})",
            "the checkpoint is damaged; start afresh with --overwrite",
        )) from None  # fmt: skip
    run.adapted.load_extra_state(state.get("method_state", {}))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])  # the data order and dropout continue exactly where they stopped
    step = state["step"]
    if run.ctx.is_main:
        keep_log_until(run.log_path, step)
    barrier()
    ui.note(f"resumed from {last} at step {step}")
    return step, Totals(**state["totals"])


def keep_log_until(log_path: Path, step: int) -> None:
    """Drop the log lines of steps after the checkpoint (they will be run again), and a torn last line left by
    a kill during a write."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # only the last line can be torn: the log is appended and flushed a line at a time
        if record["step"] <= step:
            kept.append(line + "\n")
    artifacts.atomic_write_text(log_path, "".join(kept))


# ---------------------------------------------------------------------------------------------------------
# One optimizer step


def train_step(run: Run, global_batch: list[int], step: int, timer: PhaseTimer) -> StepResult:
    """One optimizer step over ``global_batch``: grad_accum micro-batches (forward, backward), the loss synced
    across ranks and checked, then unscale, clip, step, the method's hook, zero_grad and the scheduler."""
    t, ctx = run.cfg.train, run.ctx
    # grad_accum micro-batches of near-equal size, each with at least one example per rank; collated before
    # the clock starts, so the phases time the model, not the padding loop
    rows = [shard(global_batch[i :: t.grad_accum], ctx.rank, ctx.world) for i in range(t.grad_accum)]
    micro_batches = [to_device(collate(run.train_data, r), ctx.device) for r in rows]
    return step_on(run, micro_batches, rows, len(global_batch), step, timer)


def step_on(
    run: Run, micro_batches: list[dict], rows: list[list[int]], global_size: int, step: int, timer: PhaseTimer
) -> StepResult:
    """The optimizer step of ``train_step`` on micro-batches already collated and on the device (this rank's
    ``rows`` of a global batch of ``global_size`` examples); the probe's training regime calls it directly."""
    t, ctx = run.cfg.train, run.ctx
    timer.start()
    loss_sum, regularizer, mem_forward = forward_backward(run, micro_batches, rows, global_size, timer)
    mem_peak = timer.memory(peak=True)
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
    if t.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm)
    loss, extra = synced_loss(loss_sum, regularizer, ctx.world)
    if not math.isfinite(loss + (extra or 0.0)):
        raise NonFiniteLoss(Problem(
            f"step {step + 1}",
            f"the loss is {loss}" + ("" if extra is None else f" (+ {extra})"),
            f"the last good checkpoint is kept in {run.ckpt_dir / 'last'}; lower train.lr or use "
            "train.precision=fp32/bf16, then `actlora train --resume`",
        ))  # fmt: skip
    lr = run.optimizer.param_groups[0]["lr"]
    optimizer_step(run, step)
    timer.mark()
    memory = (mem_forward, mem_peak, timer.memory())
    return StepResult(loss, extra, lr, timer.phases_ms(), memory, global_size)


def forward_backward(
    run: Run, micro_batches: list[dict], rows: list[list[int]], global_size: int, timer: PhaseTimer
) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """Forward and backward of each micro-batch, gradients accumulating; returns this rank's summed task loss
    (on the device: no host sync here), the method's term, and the memory after the first forward."""
    ctx, last = run.ctx, len(micro_batches) - 1
    loss_sum = torch.zeros((), device=ctx.device)
    regularizer, mem_forward = None, None
    for i, (batch, batch_rows) in enumerate(zip(micro_batches, rows, strict=True)):
        labels = batch.pop("labels")
        # DDP all-reduces gradients during backward: only the last micro-batch needs it, the others only add
        # to .grad locally, so their sync is skipped
        skip_sync = ctx.enabled and i < last
        # the prefix cache's hooks stay through the backward: where transformers runs a checkpointed layer's
        # hooks inside the checkpoint (older versions do), its recomputation must see the replayed input again
        cached = run.cache.around(batch_rows) if run.cache else nullcontext()
        with run.ddp_model.no_sync() if skip_sync else nullcontext(), cached:
            with run.autocast():
                logits = run.ddp_model(**batch).logits
            # sum over this rank's share, scaled so that DDP's average over ranks is the mean over the global
            # batch whatever the shares' sizes (a per-rank mean would weight them unequally)
            loss = compute_loss(logits, labels, run.spec.is_regression, "sum") * (ctx.world / global_size)
            loss_sum += loss.detach()
            if i == last:
                # once per step, with the last micro-batch (DDP averages it over ranks: the same term)
                regularizer = run.adapted.regularizer()
                if regularizer is not None:
                    loss = loss + regularizer
            timer.mark()
            if i == 0:
                mem_forward = timer.memory()
            (run.scaler.scale(loss) if run.scaler else loss).backward()
            timer.mark()
    return loss_sum, regularizer, mem_forward


def synced_loss(
    loss_sum: torch.Tensor, regularizer: torch.Tensor | None, world: int
) -> tuple[float, float | None]:
    """The global batch's mean task loss (summed over ranks) and the method's term (the same on each), read
    to the host in one sync."""
    if regularizer is None:
        return float(all_reduce_sum(loss_sum)) / world, None
    loss, extra = torch.stack([all_reduce_sum(loss_sum) / world, regularizer.detach()]).tolist()
    return loss, extra


def optimizer_step(run: Run, step: int) -> None:
    """AdamW (through the grad scaler under fp16), the method's after-step hook, zero_grad, the scheduler."""
    stepped = True
    if run.scaler is not None:
        # reading the scale syncs the host: only when a method's step hook needs to know
        scale = run.scaler.get_scale() if run.adapted.has_step_hook else None
        run.scaler.step(run.optimizer)
        run.scaler.update()
        stepped = scale is None or run.scaler.get_scale() >= scale  # it drops when inf grads skip the step
    else:
        run.optimizer.step()
    if stepped:  # AdaLoRA's importance must not average in a skipped step's inf gradients
        run.adapted.after_optimizer_step(step)  # needs the gradients: before zero_grad
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()


# ---------------------------------------------------------------------------------------------------------
# The loop


@runfolder.exclusive
def run_train(
    cfg: Config, plan: Plan | None = None, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train lora.method on ``plan`` (None: the run's own, see ``rank.resolve_plan``); write adapter/ (model/
    for full fine-tuning), checkpoints/, train_log.jsonl and train_summary.json; returns the summary.
    ``resume`` continues the run's last checkpoint; ``overwrite`` replaces an earlier run in the folder."""
    started, host = time.perf_counter(), HostLoad()
    replaced = check_outputs(cfg, resume, overwrite)
    run = setup_run(cfg, plan)
    aside = set_aside(cfg, run.ctx, replaced)
    step, totals = resume_from(run) if resume else (0, Totals())
    if run.ctx.is_main:
        artifacts.write_resolved(cfg)
    share = 100 * run.trainable / run.total
    ui.note(
        f"{run.adapted.describe(cfg.lora)} (from {run.plan.source}); "
        f"trainable {run.trainable:,} of {run.total:,} ({share:.3f}%)"
    )
    t, per_epoch = cfg.train, run.steps_per_epoch
    timer = PhaseTimer(run.ctx.device)
    loop_start = time.perf_counter() - totals.train_seconds  # a resumed run's clock continues
    run.ddp_model.train()
    # the log is appended to (a resumed run continues it) by rank 0 only, and closed on any exit
    log_file = run.log_path.open("a") if run.ctx.is_main else nullcontext()
    stop = False
    # the trackers end with the run: finished after the summary, or marked failed by an exception
    with (
        run.tracker.session(tracking.params(cfg, run.plan), step),
        ui.progress("train", run.total_steps, every=t.logging_steps) as advance,
        log_file as log,
        stop_at_step_end(run.ctx) as interrupt_requested,  # Ctrl-C: see interrupt.py
    ):
        advance(step)
        while step < run.total_steps and totals.stopped_early is None:  # a resumed early stop stays stopped
            epoch = step // per_epoch
            # the epoch's order is a function of the seed and the epoch, so a resumed run sees the same
            # batches
            batches = batch_indices(
                len(run.train_data), t.batch_size, shuffle=True, seed=t.seed + epoch,
                lengths=run.train_data.lengths if t.group_by_length else None,
                min_size=run.ctx.world * t.grad_accum,
            )  # fmt: skip
            for global_batch in batches[step - epoch * per_epoch :]:
                result = train_step(run, global_batch, step, timer)
                step += 1
                totals.add(result)
                if log is not None:
                    log.write(json.dumps(log_record(step, per_epoch, result)) + "\n")
                    log.flush()  # a line at a time: a kill leaves at most the last line torn
                rate = totals.samples / (time.perf_counter() - loop_start)
                advance(
                    1,
                    info=f"epoch {step / per_epoch:.2f}  loss {result.loss:.4f}  lr {result.lr:.2e}  "
                    f"{rate:.1f} samples/s",
                )
                if step % t.logging_steps == 0 or step == run.total_steps:  # the progress line's cadence
                    run.tracker.log(train_metrics(result, step / per_epoch, rate), step)
                # asked on every rank at every step (an all-reduce under torchrun): all stop after one step
                interrupted = interrupt_requested() and step < run.total_steps
                stop = after_step(run, step, totals, loop_start, interrupted)
                if interrupted and not stop:  # an early stop at this step finishes the run instead
                    last = run.ckpt_dir / "last"
                    ui.tell(f"interrupted after step {step} of {run.total_steps}: its checkpoint is {last}")
                    raise KeyboardInterrupt
                if stop or step >= run.total_steps:
                    break
            if stop:
                break
        totals.train_seconds = time.perf_counter() - loop_start
        if run.cache is not None:
            run.prefix["cache"] = {"store": run.prefix["cache_store"], **run.cache.report()}
            run.cache.close()
        weights = cfg.run_dir / run.adapted.weights_dir
        kept = kept_weights(run, step, totals)
        if run.ctx.is_main:
            save_weights(run, totals, weights, kept)
        barrier()  # the weights are on disk before any rank reports the run done
        doc = summary(run, step, totals, started, artifacts.folder_hash(weights), host, kept)
        doc = artifacts.finish_stage(cfg, "train_summary", doc, run.ctx.is_main)
        run.tracker.finish(doc)
    if aside is not None and run.ctx.is_main:
        runfolder.remove(aside, cfg.run_dir)  # the replacement has finished: the earlier run may go
    return doc


def kept_weights(run: Run, step: int, totals: Totals) -> dict[str, Any]:
    """Which weights the run's adapter/ (model/) gets: the last step's, or with train.final_weights=best the
    best evaluation's step copy (``after_step`` keeps one for each new best). A best copy that is missing (a
    crash between the checkpoint and its copy, or a copy deleted by hand) falls back to the last, with a
    warning and the reason recorded."""
    last = {"from": "last", "step": step}
    if run.cfg.train.final_weights == "last":
        return last
    best = totals.best
    if best is None or math.isnan(best["value"]):
        return {**last, "best_missing": "no evaluation with a number to compare"}
    copy = run.ckpt_dir / f"step-{best['step']}"
    if not (copy / "adapter_config.json").is_file() and not (copy / "config.json").is_file():
        why = f"{copy} is missing"
        ui.warn(f"train.final_weights=best: {why}; the run keeps the last step's weights")
        return {**last, "best_missing": why}
    return {"from": "best", "step": best["step"], "metric": best["metric"], "value": best["value"],
            "copy": str(copy)}  # fmt: skip


def kept_metrics(totals: Totals, kept: dict[str, Any]) -> dict[str, Any]:
    """The evaluation of the kept weights' step (the last evaluation's when that step had none)."""
    at = [h for h in totals.history if h["step"] == kept["step"]] or totals.history[-1:]
    return at[-1]["metrics"] if at else {}


def save_weights(run: Run, totals: Totals, weights: Path, kept: dict[str, Any]) -> None:
    """The kept weights (``kept_weights``: the model's last state, or the best evaluation's step copy); an
    adapter folder also gets the tokenizer, the labels, a portable base reference and a model card
    (model_card.complete); a full model/ is complete as saved."""
    if kept["from"] == "best":
        # the copy as the method saved it (AdaLoRA's is cut to its rank pattern: it does not load back into
        # the training model, so the files are copied rather than loaded and saved again)
        shutil.rmtree(weights, ignore_errors=True)
        shutil.copytree(kept["copy"], weights)
    else:
        run.adapted.save(weights)
    if run.cfg.lora.method != "full":
        final = kept_metrics(totals, kept)
        model_card.complete(
            weights, tokenizer=run.tokenizer, model_name=run.cfg.model.name, method=run.cfg.lora.method,
            task=run.spec.name, labels=model_card.label_record(run.spec.num_labels, run.spec.label_names),
            plan={**run.plan.to_doc(), "source": run.plan.source}, metrics=final, trainable=run.trainable,
        )  # fmt: skip
    runfolder.mark(weights)


def after_step(run: Run, step: int, totals: Totals, loop_start: float, interrupted: bool = False) -> bool:
    """Evaluation (at epoch ends, and every train.eval_steps), early stopping, checkpoints (also when the run
    is ``interrupted`` after this step); True when the run stops early (train.patience evaluations without a
    better first metric)."""
    t = run.cfg.train
    epoch_done = step % run.steps_per_epoch == 0 or step == run.total_steps
    evaluate = epoch_done or (t.eval_steps is not None and step % t.eval_steps == 0)
    stop = new_best = False
    if evaluate:
        predictions = evaluate_epoch(run, step, totals)
        before = totals.best
        stop = no_longer_improving(run, step, totals)
        new_best = totals.best is not before
        # of the weights the run keeps: the latest evaluation's (the last when the run ends), or the best's
        if run.ctx.is_main and (t.final_weights == "last" or new_best):
            artifacts.atomic_write_text(run.cfg.run_dir / "predictions.json", json.dumps(predictions))
    saving = interrupted or (t.save_every is not None and step % t.save_every == 0)
    if evaluate or stop or saving:
        totals.train_seconds = time.perf_counter() - loop_start
        # with train.final_weights=best, each new best keeps its step copy: the weights the run ends with
        keep = epoch_done or stop or (new_best and t.final_weights == "best")
        checkpoint(run, step, totals, keep_step_copy=keep)
    return stop


def no_longer_improving(run: Run, step: int, totals: Totals) -> bool:
    """Track the best evaluation (the first metric of the first split: higher is better for every task
    metric); True when train.patience evaluations in a row have not beaten it."""
    split, values = next(iter(totals.history[-1]["metrics"].items()))
    name, value = next(iter(values.items()))
    if totals.best is None or math.isnan(totals.best["value"]) or value > totals.best["value"]:
        totals.best = {"step": step, "metric": f"{split} {name}", "value": value}
        totals.stale = 0
    else:
        totals.stale += 1
    patience = run.cfg.train.patience
    if patience is not None and totals.stale >= patience and step < run.total_steps:
        totals.stopped_early = {
            "step": step,
            "evaluations_without_improvement": totals.stale,
            "best": totals.best,
        }
        ui.note(
            f"early stop at step {step}: {totals.stale} evaluations without a better {totals.best['metric']}"
        )
        return True
    return False


def log_record(step: int, steps_per_epoch: int, result: StepResult) -> dict[str, Any]:
    """One line of train_log.jsonl."""
    forward, backward, optimizer = result.phases_ms
    return {
        "step": step,
        "epoch": round(step / steps_per_epoch, 4),
        "loss": result.loss,
        **({} if result.regularizer is None else {"regularizer": result.regularizer}),
        "lr": result.lr,
        "forward_ms": round(forward, 3),
        "backward_ms": round(backward, 3),
        "optimizer_ms": round(optimizer, 3),
        "samples": result.samples,
        "mem_after_forward_mib": result.memory_mib[0],
        "mem_peak_backward_mib": result.memory_mib[1],
        "mem_after_step_mib": result.memory_mib[2],
    }


def train_metrics(result: StepResult, epoch: float, samples_per_second: float) -> dict[str, float]:
    """What the trackers get every train.logging_steps: the progress line's numbers."""
    extra = {} if result.regularizer is None else {"train/regularizer": result.regularizer}
    return {"train/loss": result.loss, **extra, "train/lr": result.lr, "train/epoch": epoch,
            "train/samples_per_second": samples_per_second}  # fmt: skip


def evaluate_epoch(run: Run, step: int, totals: Totals) -> dict[str, Any]:
    """Validation metrics at an epoch end, into the history (every rank takes part: the logits are
    gathered); returns the first split's per-example predictions, which ``after_step`` writes to
    predictions.json when they are of the weights the run keeps (paired comparisons of runs on the same
    examples, error analysis)."""
    began = time.perf_counter()
    metrics, predictions = {}, {}
    for i, (split, data) in enumerate(run.eval_data.items()):
        logits = predict(run.model, data, run.cfg.train.eval_batch_size, run.ctx, run.autocast)
        labels = data.labels.numpy()
        metrics[split] = compute_metrics(run.spec.metrics, logits, labels, run.spec.is_regression)
        if i == 0:
            predicted = logits[:, 0] if run.spec.is_regression else logits.argmax(axis=-1)
            predictions = {"split": split, "step": step, "labels": labels.tolist(),
                           "predictions": predicted.tolist()}  # fmt: skip
    run.ddp_model.train()  # evaluation left the model in eval mode
    totals.eval_seconds += time.perf_counter() - began
    epoch = round(step / run.steps_per_epoch, 4)
    totals.history.append({"step": step, "epoch": epoch, "metrics": metrics})
    run.tracker.log({f"eval/{s}/{k}": v for s, m in metrics.items() for k, v in m.items()}, step)
    shown = ", ".join(f"{s}: " + " ".join(f"{k} {v:.4f}" for k, v in m.items()) for s, m in metrics.items())
    ui.note(f"step {step} (epoch {step / run.steps_per_epoch:.2f}): {shown}")
    return predictions


def checkpoint(run: Run, step: int, totals: Totals, keep_step_copy: bool) -> None:
    """checkpoints/last (rank 0 writes, every rank waits); at an epoch end also a copy of the weights as
    checkpoints/step-N."""
    began = time.perf_counter()
    if run.ctx.is_main:
        extra = {"meta": run.meta(), "totals": asdict(totals)}
        last = run.ckpt_dir / "last"
        save_checkpoint(last, run.adapted, run.optimizer, run.scheduler, run.scaler, step, extra)
        if keep_step_copy:
            weights = run.adapted.weights_dir
            shutil.copytree(last / weights, run.ckpt_dir / f"step-{step}", dirs_exist_ok=True)
            runfolder.mark(run.ckpt_dir / f"step-{step}")  # actlora's: save_total_limit may delete it
            limit = run.cfg.train.save_total_limit
            copies = sorted(run.ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            best = f"step-{totals.best['step']}" if totals.best else None
            for old in copies[: max(0, len(copies) - limit)] if limit is not None else []:
                if old.name != best:  # the best evaluation's copy stays
                    runfolder.remove(old, run.cfg.run_dir)  # the oldest beyond train.save_total_limit
    barrier()
    totals.checkpoint_seconds += time.perf_counter() - began  # saved with the next checkpoint


def summary(
    run: Run, step: int, totals: Totals, started: float, weights_hash: str, host: HostLoad, kept: dict
) -> dict[str, Any]:
    """train_summary.json's payload: the plan, the method, parameters, metrics and the cost account."""
    cfg, ctx, plan = run.cfg, run.ctx, run.plan
    steps_run, seconds = max(1, totals.steps_timed), totals.train_seconds
    step_seconds = sum(totals.phase_ms) / 1000
    phases = ("forward", "backward", "optimizer")
    return {
        "model": run.arch.identity(cfg.model.name),
        "task": {"name": run.spec.name, "train_examples": len(run.train_data),
                 "id2label": id2label(run.spec)},
        "plan": {"layers": plan.layers, "k": plan.k, "tau": plan.tau, "rule": plan.rule,
                 "strategy": plan.strategy, "seed": plan.seed, "source": plan.source,
                 "ranks_agreeing": run.ranks_agreeing},
        "method": cfg.lora.method,
        "method_settings": run.adapted.settings,
        "weights_hash": weights_hash,  # eval.json records the hash it measured: compare checks they agree
        # which step's weights adapter/ holds (train.final_weights), and for the best, its metric and value
        "weights": {k: v for k, v in kept.items() if k != "copy"},
        "lora": cfg.lora.model_dump(),
        "trainable_parameters": run.trainable,
        "total_parameters": run.total,
        "trainable_share": run.trainable / run.total,
        "steps": step,
        "epochs": round(step / run.steps_per_epoch, 4),
        "final_metrics": kept_metrics(totals, kept),  # of the weights adapter/ holds
        "best": totals.best,
        "stopped_early": totals.stopped_early,
        "history": totals.history,
        "frozen_prefix": run.prefix,
        "gradient_checkpointing": {"layers": run.checkpointed} if run.checkpointed else None,
        "mean_step_ms": {p: round(v / steps_run, 3) for p, v in zip(phases, totals.phase_ms, strict=True)},
        "train_seconds": round(seconds, 3),
        "eval_seconds": round(totals.eval_seconds, 3),
        "samples_per_second": round(totals.samples / seconds, 3) if seconds else None,
        "device": str(ctx.device),
        "world_size": ctx.world,
        # the paper's GPU-hours (Table 6: "derived from phase-level timing totals"): the timed forward,
        # backward and optimizer phases of every step, times the ranks; evaluation, checkpoints, loading and
        # data preparation are accounted apart (cost), and the probe is charged by compare
        "device_hours": round(step_seconds * ctx.world / 3600, 6),
        "cost": {
            "step_seconds": round(step_seconds, 3),
            "eval_seconds": round(totals.eval_seconds, 3),
            "checkpoint_seconds": round(totals.checkpoint_seconds, 3),
            "load_seconds": round(run.prep_seconds["load_seconds"], 3),
            "data_seconds": round(run.prep_seconds["data_seconds"], 3),
            "loop_seconds": round(seconds, 3),
        },
        "host": host.report(),
        "prediction": predicted_vs_measured(run, step, totals),
        "peak_memory_mib": totals.peak_mib if ctx.device.type == "cuda" else None,
        "precision": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "fp32",
        "wall_seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip


def predicted_vs_measured(run: Run, step: int, totals: Totals) -> dict[str, Any] | None:
    """The cost model's step time for this plan (from the run folder's costs.json, ``actlora profile``)
    against the measured one; None without a profile, and the reason when it does not apply."""
    cfg = run.cfg
    path = cfg.run_dir / "costs.json"
    if not path.is_file():
        return None
    try:
        doc = artifacts.read_artifact(path, "costs", model_name=cfg.model.name)
    except ArtifactError as exc:
        return {"skipped": exc.problems[0].what}
    differ = costmodel.settings_differ(doc, cfg, run.ctx.device.type)
    if run.ctx.world > 1:
        differ.append(f"world size 1 -> {run.ctx.world} (the profile measures one process)")
    if differ:
        return {"skipped": "profiled under other settings: " + "; ".join(differ)}
    shape = costmodel.RunShape(step, run.steps_per_epoch, run.cache is not None, run.ctx.world)
    predicted = costmodel.predict(costmodel.CostModel.from_doc(doc), run.plan.layers, shape)
    measured = sum(totals.phase_ms) / 1000 / max(1, totals.steps_timed)
    return {
        "costs_hash": artifacts.file_hash(path),
        **predicted,
        "measured_mean_step_seconds": round(measured, 6),
        "measured_over_predicted": round(measured / predicted["mean_step_seconds"], 4)
        if predicted["mean_step_seconds"]
        else None,
    }
