"""Act-LoRA's statistic (Algorithm 1): per layer, the mean over non-pad tokens of the per-token L2 norm of
the activation at the probe site, averaged over the probe batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..distributed import all_reduce_sum
from ..modeling import Architecture, Site
from .hooks import reading_hooks
from .regime import Inference, Regime


@dataclass
class LayerStatistic:
    """What a scorer returns: per-layer raw values and what they were computed over."""

    raw: list[float | None]  # None: the scorer cannot score that layer (e.g. CKA's degenerate embedding pair)
    batches: int
    tokens: int
    examples: int
    # the scorer's own pass over the probe batches: forwards only for activation norms and CKA; for the
    # gradient scorers the backward and the gradients' all-reduce too (probe.py reports it as probe_s)
    forward_seconds: float
    # per layer, the standard error of the raw value over the S batches (the spread of the per-batch values /
    # sqrt(S)): how far the next probe could move it. None where the scorer does not measure it, or S < 2.
    raw_stderr: list[float] | None = None
    # per batch, per layer: the values averaged into raw (activation norms), for the paired standard error of
    # two layers' difference (selection.paired_noise); None where the scorer does not keep them
    per_batch: list[list[float]] | None = None
    # per projection (a target of lora.targets, or an adapted module), the raw per-layer values of that
    # projection alone, for scorers that measure projections (gradients, weight delta); None for the
    # per-layer readings (activation norms, CKA)
    by_target: dict[str, list[float | None]] | None = None


class _Accumulator:
    """Per batch and layer, the sum of token norms over non-pad tokens, and the batch's token count; kept on
    the device (no host sync per layer). Sums rather than means, so that under DDP each rank can score its
    share of a batch and the all-reduced result equals one process scoring the whole batch. ``sums`` and
    ``counts`` hold the batches not yet all-reduced; ``batch_means`` reduces them once and keeps the result,
    so it can be asked after every batch (probe.steps=auto) as well as once at the end."""

    def __init__(self, num_layers: int, device: torch.device):
        self.num_layers = num_layers
        self.device = device
        self.sums: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        empty = {"dtype": torch.float64, "device": device}
        self.reduced_sums = torch.zeros(0, num_layers, **empty)
        self.reduced_counts = torch.zeros(0, **empty)

    def set_batch(self, attention_mask: torch.Tensor) -> None:
        self.mask = attention_mask.to(torch.float32)
        self.sums.append(torch.zeros(self.num_layers, dtype=torch.float64, device=self.device))
        self.counts.append(self.mask.sum().to(torch.float64))

    def add(self, index: int, hidden: torch.Tensor) -> None:
        norms = torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32)  # (batch, tokens)
        self.sums[-1][index] += (norms * self.mask).sum()

    def batch_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-batch, per-layer mean token norm; tokens per batch) of every batch so far, summed over DDP
        ranks first. A collective: every rank calls it at the same points."""
        # on the device: NCCL reduces only CUDA tensors
        empty = {"dtype": torch.float64, "device": self.device}
        sums = torch.stack(self.sums) if self.sums else torch.zeros(0, self.num_layers, **empty)
        counts = torch.stack(self.counts) if self.counts else torch.zeros(0, **empty)
        all_reduce_sum(sums)
        all_reduce_sum(counts)
        self.reduced_sums = torch.cat([self.reduced_sums, sums])
        self.reduced_counts = torch.cat([self.reduced_counts, counts])
        self.sums, self.counts = [], []
        return self.reduced_sums / self.reduced_counts.clamp(min=1).unsqueeze(1), self.reduced_counts


def probe_hooks(model: nn.Module, arch: Architecture, site: Site, acc: _Accumulator):
    """Forward hooks on every layer's probe point feeding ``acc``; removed on exit, and checked to be gone."""
    points = []
    for index in range(arch.num_layers):
        name, which = arch.probe_point(site, index)
        points.append((model.get_submodule(name), which, lambda hidden, i=index: acc.add(i, hidden)))
    return reading_hooks(points, "probe")


def activation_norm_scorer(model, arch, batches, cfg, device, stop=None, regime=None) -> LayerStatistic:
    """The registry's entry: every scorer takes (model, arch, batches, cfg, device) and a probe regime
    (``regime.py``; None: inference); this one also a stop rule (probe.steps=auto)."""
    return activation_norms(model, arch, batches, cfg.probe.site, device, stop, regime)


def activation_norms(
    model: nn.Module,
    arch: Architecture,
    batches: Iterable[dict[str, torch.Tensor]],
    site: Site,
    device: torch.device,
    stop: Callable[[torch.Tensor], bool] | None = None,
    regime: Regime | None = None,
) -> LayerStatistic:
    """A_l = (1/S) sum_t mean_{non-pad tokens i} ||h_l(x_t)_i||_2, for every layer l, read in the forward of
    each batch (``regime``: inference, or a training step).

    With ``stop``, after each batch it is handed the per-batch means so far (all-reduced, on the device;
    a host sync per batch) and the probe ends early when it returns True; S is then the batches used."""
    acc = _Accumulator(arch.num_layers, device)
    examples = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    # the hooks go on after the session opens: a training session's adapters are in place by then
    with (regime or Inference()).session(model, arch, []) as step, probe_hooks(model, arch, site, acc):
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            acc.set_batch(batch["attention_mask"])
            step(batch)
            examples += batch["input_ids"].shape[0]
            if stop is not None and stop(acc.batch_means()[0]):
                break
        # without a stop rule, one host sync at the end: hooks only queue reductions, so the probe runs at
        # inference speed
        means, counts = acc.batch_means()
        raw = means.mean(dim=0).tolist() if len(counts) else [0.0] * arch.num_layers
        # A_l averages S per-batch values: their spread says whether two layers' A_l are told apart
        stderr = (means.std(dim=0) / len(counts) ** 0.5).tolist() if len(counts) >= 2 else None
    seconds = time.perf_counter() - start
    return LayerStatistic(
        raw=raw,
        batches=len(counts),
        tokens=int(counts.sum().item()),
        examples=int(all_reduce_sum(examples).item()),
        forward_seconds=seconds,
        raw_stderr=stderr,
        per_batch=means.tolist(),
    )
