"""Gradient-based layer importance (Act-LoRA sections 7.3 and 7.5): per probe batch, the gradient of the task
loss with respect to the weights of the projections LoRA adapts (``lora.targets`` in every layer), reduced
per layer and averaged over the batches:

- ``grad_norm``: sum over the layer's target weights W of ||dL/dW||_F;
- ``fisher``: sum over the layer's target weights of sum((dL/dW)^2), the diagonal of the empirical Fisher
  summed over the weights, using the mini-batch gradient (not per-example squared gradients, which would
  need one backward per example);
- ``taylor``: sum over the layer's target weights of sum(|W * dL/dW|), the first-order Taylor estimate of the
  loss change from removing the weights.

Per projection (``by_target``): the same statistic with the sum taken over one target's weights only (the
Q and V rows of Table 11 and Fig. 12); the per-layer value is the sum over the targets.

How the batch is run is ``probe.regime`` (``regime.py``). In inference (the default) the model runs in eval
mode (no dropout: the statistic is deterministic for a given set of batches), with ``requires_grad``
switched on for the target weights only and every parameter's flag restored afterwards; gradients come from
``torch.autograd.grad``, so no ``.grad`` is ever written. In training, the gradient is that of each optimizer
step's loss with respect to the same weights (the frozen base weights W of the adapted projections; taylor's
w is W too). Under DDP each rank's gradient (of its mean loss over its share of the batch) is all-reduced
into the gradient of the mean loss over the whole global batch before the statistics are taken: every rank
then holds what one process scoring the whole batch would compute. This costs one all-reduce of the target
weights' gradients per probe batch, the price of statistics that do not depend on the number of ranks
(averaging per-rank norms would not be: the norm of a mean is not the mean of the norms).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal

import torch
from torch import nn

from ..distributed import all_reduce_sum
from ..errors import ModelError, Problem
from ..modeling import Architecture, target_suffixes
from .activation import LayerStatistic
from .regime import Inference, Regime

Kind = Literal["grad_norm", "fisher", "taylor"]

# (weight, gradient) -> that weight's contribution to its layer's statistic, in float64
STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grad_norm": lambda w, g: torch.linalg.vector_norm(g, dtype=torch.float64),
    "fisher": lambda w, g: torch.linalg.vector_norm(g, dtype=torch.float64) ** 2,
    "taylor": lambda w, g: torch.linalg.vector_norm(w.float() * g.float(), ord=1, dtype=torch.float64),
}


def target_weights(
    model: nn.Module, arch: Architecture, targets: list[str]
) -> list[list[tuple[str, nn.Parameter]]]:
    """Per layer, (target, weight) for the modules ``lora.targets`` names (matched as peft matches
    ``target_modules``: the module's path inside the layer equals the target or ends with ``.target``); a
    module two targets name counts once, for the first."""
    suffixes = target_suffixes(arch, targets)
    per_layer = []
    for index in range(arch.num_layers):
        layer = model.get_submodule(arch.layer_path(index))
        weights = []
        for name, module in layer.named_modules():
            if not isinstance(getattr(module, "weight", None), torch.Tensor):
                continue
            named = [t for t, s in zip(targets, suffixes, strict=True) if name == s or name.endswith("." + s)]
            target = named[0] if named else None
            if target is not None:
                weights.append((target, module.weight))
        if not weights:
            raise ModelError(
                Problem(
                    "lora.targets",
                    f"{targets} match no module with a weight in {arch.layer_path(index)}",
                    "use q, k, v, o or a module name suffix of the layer",
                )
            )
        if not all(w.is_floating_point() for _, w in weights):
            raise ModelError(
                Problem(
                    "probe.scorer",
                    "gradient scorers need floating-point weights, and the base is quantised",
                    "probe with model.quantization=none (the scores then transfer to the 4-bit run)",
                )
            )
        per_layer.append(weights)
    return per_layer


def gradient_scorer(
    model: nn.Module,
    arch: Architecture,
    batches: Iterable[dict[str, torch.Tensor]],
    cfg,
    device: torch.device,
    *,
    kind: Kind,
    regime: Regime | None = None,
) -> LayerStatistic:
    """(1/S) sum_t sum_{W in layer l's targets} stat(W, dL_t/dW), for every layer l, and per target (see the
    module docstring)."""
    stat = STATISTICS[kind]
    per_layer = target_weights(model, arch, cfg.lora.targets)
    pairs = [(i, target, w) for i, weights in enumerate(per_layer) for target, w in weights]
    flat = [w for _, _, w in pairs]
    names = list(dict.fromkeys(target for _, target, _ in pairs))  # the targets found, in lora.targets order
    # column of each weight in a (layer x target) table
    cell = torch.tensor([i * len(names) + names.index(t) for i, t, _ in pairs], device=device)
    values: list[torch.Tensor] = []
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    examples = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    with (regime or Inference()).session(model, arch, flat) as step:
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            grads = step(batch)
            per_weight = torch.stack([stat(w, g) for w, g in zip(flat, grads, strict=True)])
            table = torch.zeros(arch.num_layers * len(names), dtype=torch.float64, device=device)
            values.append(table.index_add_(0, cell, per_weight).view(arch.num_layers, len(names)))
            tokens += batch["attention_mask"].sum()
            examples += batch["labels"].shape[0]
    # the statistics are of the global batch's gradient, already identical on every rank: no reduction
    stacked = torch.stack(values) if values else None  # (batches, layers, targets)
    by_layer = stacked.sum(dim=2) if stacked is not None else None
    raw = by_layer.mean(dim=0).tolist() if by_layer is not None else [None] * arch.num_layers
    # the spread of the per-batch values, as for activation norms: whether two layers are told apart
    stderr = (by_layer.std(dim=0) / len(values) ** 0.5).tolist() if len(values) >= 2 else None
    by_target = None
    if stacked is not None:
        by_target = {t: stacked[:, :, j].mean(dim=0).tolist() for j, t in enumerate(names)}
    return LayerStatistic(
        raw=raw,
        batches=len(values),
        tokens=int(all_reduce_sum(tokens).item()),
        examples=int(all_reduce_sum(examples).item()),
        forward_seconds=time.perf_counter() - start,
        raw_stderr=stderr,
        per_batch=by_layer.tolist() if by_layer is not None else None,
        by_target=by_target,
    )


SCORERS: dict[str, Callable[..., LayerStatistic]] = {
    kind: partial(gradient_scorer, kind=kind) for kind in ("grad_norm", "fisher", "taylor")
}
