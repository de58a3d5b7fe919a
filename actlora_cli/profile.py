"""The profile stage: config -> each layer's cost on this device at the task's shapes -> ``<run>/costs.json``
(what ``costmodel`` predicts plans from, and ``rank --budget`` selects within).

The method is put on every layer once; a plan is then switched on by enabling the adapters of its layers
only (peft's per-layer ``enable_adapters``, which also freezes the rest; for full fine-tuning, the layers'
``requires_grad``). With nothing trainable below the plan's lowest layer, autograd stops the backward there,
exactly as in training. Every plan {m} and the plan with every layer run full training steps (forward,
backward, clipping, AdamW) on the same batches, chosen across the epoch's range of lengths, in interleaved
rounds so that drift on a shared machine hits every plan alike; each plan's step time is the median over the
rounds. Layer m's input is time-stamped during the forward (a pre-hook), which gives the prefix's share of the
step (what the frozen-prefix cache saves)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from . import artifacts, runfolder, ui
from .adapters import apply_method
from .checkpoints import seed_everything
from .config import Config
from .costmodel import CostModel
from .data import batch_indices, collate, encoded_split, task_spec, to_device
from .distributed import setup
from .errors import ConfigError, Problem
from .losses import compute_loss
from .modeling import autocast_context, autocast_settings, load_for
from .timing import PhaseTimer


def spread_batches(batches: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """``count`` batches of padded size (rows x longest) at the midpoints of ``count`` equal slices of the
    sorted epoch: each stands for as many batches as the others, so the sample's mean step is close to the
    epoch's however batches are grouped by length (the extremes, which end-to-end quantiles would include,
    overweight a long-tailed length distribution)."""
    by_size = sorted(batches, key=lambda b: len(b) * max(lengths[i] for i in b))
    if len(by_size) <= count:
        return by_size
    return [by_size[int((q + 0.5) * len(by_size) / count)] for q in range(count)]


def _layer_of(name: str, marker: str) -> int | None:
    if marker not in name:
        return None
    index = name.split(marker, 1)[1].split(".", 1)[0]
    return int(index) if index.isdigit() else None


class _Switch:
    """Turns the method on for a plan's layers only."""

    def __init__(self, model: torch.nn.Module, marker: str, method: str):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.tuners = [
            (layer, m) for n, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and (layer := _layer_of(n, marker)) is not None
        ]  # fmt: skip
        self.full = method == "full"
        self.params = [
            (layer, p) for n, p in model.named_parameters()
            if p.requires_grad and (layer := _layer_of(n, marker)) is not None
        ]  # fmt: skip

    def plan(self, layers: list[int]) -> None:
        wanted = set(layers)
        for layer, module in self.tuners:
            module.enable_adapters(layer in wanted)
        if self.full:
            for layer, p in self.params:
                p.requires_grad_(layer in wanted)


class _LayerClock:
    """Marks the start of each layer's forward (CUDA events on GPU: no host sync mid-step)."""

    def __init__(self, layers: list[torch.nn.Module], device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[int, Any] = {}
        self.handles = [
            layer.register_forward_pre_hook(lambda _m, _a, i=i: self._mark(i))
            for i, layer in enumerate(layers)
        ]

    def _mark(self, index: int) -> None:
        if index in self.marks:  # the first call only (a layer run twice would overwrite its mark)
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[index] = event
        else:
            self.marks[index] = time.perf_counter()

    def since(self, start: Any, index: int) -> float:
        mark = self.marks[index]
        if self.cuda:
            mark.synchronize()
            return start.elapsed_time(mark) / 1000
        return mark - start

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@runfolder.exclusive
def run_profile(cfg: Config, batches: int = 8, rounds: int = 3) -> dict[str, Any]:
    """Measure and write ``costs.json``; returns the document."""
    started = time.perf_counter()
    ctx = setup()
    if ctx.world > 1:
        raise ConfigError(
            [Problem("torchrun", "profile measures one process's device", "run `actlora profile` alone")]
        )
    t = cfg.train
    spec = task_spec(cfg.task)
    seed_everything(t.seed)
    loaded = load_for(cfg.model, spec.num_labels, ctx.device)
    arch, num_layers = loaded.arch, loaded.arch.num_layers
    data = encoded_split(loaded.tokenizer, cfg.task, spec, cfg.task.train_split)
    epoch = batch_indices(
        len(data), t.batch_size, shuffle=True, seed=t.seed,
        lengths=data.lengths if t.group_by_length else None, min_size=t.grad_accum,
    )  # fmt: skip
    chosen = spread_batches(epoch, data.lengths, batches)
    adapted = apply_method(loaded.model, arch, cfg.lora, list(range(num_layers)), total_steps=10**6)
    model = adapted.model
    switch = _Switch(model, f"{arch.layers_pattern}.", cfg.lora.method)
    params = [p for p in model.parameters() if p.requires_grad]
    # one optimizer over every layer's parameters: AdamW skips those a plan leaves without a gradient
    fused = {"fused": True} if ctx.device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
    amp_dtype, _ = autocast_settings(t.precision, ctx.device)
    autocast = autocast_context(amp_dtype, ctx.device)
    stack = model.get_submodule(_stack_path(model, arch))
    clock = _LayerClock(list(stack), ctx.device)
    timer = PhaseTimer(ctx.device)
    plans = [[m] for m in range(num_layers)] + [list(range(num_layers))]

    # per chosen batch, its grad_accum micro-batches, on the device before any clock starts
    def on_device(b: list[int]) -> list[dict]:
        return [to_device(collate(data, b[i :: t.grad_accum]), ctx.device) for i in range(t.grad_accum)]

    micro = [on_device(b) for b in chosen]
    # [plan][round][batch] -> (seconds, phases ms, prefix seconds, peak MiB)
    samples: list[list[list[tuple]]] = [[] for _ in plans]

    def step(plan: list[int], micro_batches: list[dict]) -> tuple:
        clock.marks = {}
        timer.start()
        for batch in micro_batches:
            batch = dict(batch)
            labels = batch.pop("labels")
            with autocast():
                logits = model(**batch).logits
            loss = compute_loss(logits, labels, spec.is_regression, "mean") / len(micro_batches)
            timer.mark()
            loss.backward()
            timer.mark()
        peak = timer.memory(peak=True)
        if t.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.mark()
        phases = timer.phases_ms()
        prefix = clock.since(timer.marks[0], min(plan))
        return sum(phases) / 1000, phases, prefix, peak

    model.train()
    total = rounds * len(plans) * len(micro)
    try:
        title = f"profile {len(plans)} plans x {len(micro)} batches x {rounds} rounds"
        with ui.progress(title, total) as advance:
            for r in range(rounds):
                for p, plan in enumerate(plans):
                    switch.plan(plan)
                    if r == 0:
                        step(plan, micro[0])  # warm-up: allocator, kernels, the optimizer's state
                    samples[p].append([step(plan, mb) for mb in micro])
                    advance(len(micro))
    finally:
        clock.close()

    def median_over_rounds(p: int, field: int) -> float:
        per_batch = [statistics.median(rnd[b][field] for rnd in samples[p]) for b in range(len(micro))]
        return statistics.fmean(per_batch)

    measured = [median_over_rounds(p, 0) for p in range(len(plans))]
    prefix = [median_over_rounds(m, 2) for m in range(num_layers)]

    def phase_ms(p: int, i: int) -> float:
        per_batch = (statistics.median(rnd[b][1][i] for rnd in samples[p]) for b in range(len(micro)))
        return statistics.fmean(per_batch)

    phases = [[round(phase_ms(p, i), 3) for i in range(3)] for p in range(len(plans))]
    # A one-layer plan's forward and optimizer step do not depend on where its layer is (one adapter either
    # way); only the backward does. Their means over the L plans stand for each, which takes most of the
    # machine's noise out of the step time that sets a plan's cost: lowest[m] = forward + backward[m] + opt.
    single = phases[:-1]
    forward, opt = (statistics.fmean(ph[i] for ph in single) for i in (0, 2))
    lowest = [(forward + ph[1] + opt) / 1000 for ph in single]
    # how far rounds disagree: per plan, (max - min) / median of the round means
    round_means = [[statistics.fmean(s[0] for s in rnd) for rnd in samples[p]] for p in range(len(plans))]
    spread = [(max(m) - min(m)) / statistics.median(m) for m in round_means]
    if max(spread) > 0.25:
        ui.warn(
            f"the profile's rounds disagree by up to {100 * max(spread):.0f}%: other work is loading this "
            "machine; profile again when it is quiet, or with more --rounds"
        )
    peaks = [max((s[3] or 0.0) for rnd in samples[p] for s in rnd) for p in range(len(plans))]
    on_gpu = ctx.device.type == "cuda"
    doc = {
        "model": arch.identity(cfg.model.name),
        "task": {"name": spec.name, "split": cfg.task.train_split, "max_length": cfg.task.max_length},
        "method": cfg.lora.method,
        "lora_r": cfg.lora.r,
        "targets": cfg.lora.targets,
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "group_by_length": t.group_by_length,
        "precision": t.precision,
        "device": str(ctx.device),
        "batches": len(micro),
        "rounds": rounds,
        "batch_shapes": [[len(b), max(data.lengths[i] for i in b)] for b in chosen],
        "train_examples": len(data),
        "steps_per_epoch": len(epoch),
        # the model's inputs (see costmodel): lowest[m] with the forward and optimizer pooled over the
        # one-layer plans; measured_lowest: each plan's own median step, for reference
        "step_seconds": {
            "lowest": [round(s, 6) for s in lowest],
            "all": round(measured[-1], 6),
            "measured_lowest": [round(s, 6) for s in measured[:-1]],
        },
        "phases_ms": {"lowest": phases[:-1], "all": phases[-1]},
        "prefix_forward_seconds": [round(s, 6) for s in prefix],
        "round_spread": {"lowest": [round(s, 4) for s in spread[:-1]], "all": round(spread[-1], 4)},
        "peak_memory_mib": {"lowest": peaks[:-1], "all": peaks[-1]} if on_gpu else None,
        "timings": {"load_s": round(loaded.seconds, 4), "total_s": round(time.perf_counter() - started, 4)},
    }
    doc["adapter_seconds"] = round(CostModel.from_doc(doc).adapter, 6)
    return artifacts.finish_stage(cfg, "costs", doc, ctx.is_main)


def _stack_path(model: torch.nn.Module, arch) -> str:
    """The layer stack's path in the (peft-wrapped) model."""
    for name, module in model.named_modules():
        if name.endswith(arch.stack_path) and isinstance(module, torch.nn.ModuleList):
            return name
    raise RuntimeError(f"no layer stack {arch.stack_path} in the model")
