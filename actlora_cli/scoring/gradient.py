"""Gradient-based layer importance (Act-LoRA sections 7.3 and 7.5): per probe batch, the gradient of the task
loss with respect to the weights of the projections LoRA adapts (``lora.targets`` in every layer), reduced
per layer and averaged over the batches:

- ``grad_norm``: sum over the layer's target weights W of ||dL/dW||_F;
- ``fisher``: sum over the layer's target weights of sum((dL/dW)^2), the diagonal of the empirical Fisher
  summed over the weights, using the mini-batch gradient (not per-example squared gradients, which would
  need one backward per example);
- ``taylor``: sum over the layer's target weights of sum(|W * dL/dW|), the first-order Taylor estimate of the
  loss change from removing the weights.

The model runs in eval mode (no dropout: the statistic is deterministic for a given set of batches), with
``requires_grad`` switched on for the target weights only and every parameter's flag restored afterwards.
Gradients come from ``torch.autograd.grad``, so no ``.grad`` is ever written and nothing needs zeroing.
Under DDP each rank's gradient (of its mean loss over its share of the batch) is all-reduced into the
gradient of the mean loss over the whole global batch before the statistics are taken: every rank then
holds what one process scoring the whole batch would compute. This costs one all-reduce of the target
weights' gradients per probe batch, the price of statistics that do not depend on the number of ranks
(averaging per-rank norms would not be: the norm of a mean is not the mean of the norms).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import all_reduce_sum
from ..errors import ModelError, Problem
from ..losses import compute_loss
from ..modeling import Architecture, target_suffixes
from .activation import LayerStatistic

Kind = Literal["grad_norm", "fisher", "taylor"]

# (weight, gradient) -> that weight's contribution to its layer's statistic, in float64
STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grad_norm": lambda w, g: torch.linalg.vector_norm(g, dtype=torch.float64),
    "fisher": lambda w, g: torch.linalg.vector_norm(g, dtype=torch.float64) ** 2,
    "taylor": lambda w, g: torch.linalg.vector_norm(w.float() * g.float(), ord=1, dtype=torch.float64),
}


def target_weights(model: nn.Module, arch: Architecture, targets: list[str]) -> list[list[nn.Parameter]]:
    """Per layer, the weights of the modules ``lora.targets`` names (matched as peft matches
    ``target_modules``: the module's path inside the layer equals the target or ends with ``.target``)."""
    suffixes = target_suffixes(arch, targets)
    per_layer = []
    for index in range(arch.num_layers):
        layer = model.get_submodule(arch.layer_path(index))
        weights = [
            module.weight
            for name, module in layer.named_modules()
            if any(name == s or name.endswith("." + s) for s in suffixes)
            and isinstance(getattr(module, "weight", None), torch.Tensor)
        ]
        if not weights:
            raise ModelError(
                Problem(
                    "lora.targets",
                    f"{targets} match no module with a weight in {arch.layer_path(index)}",
                    "use q, k, v, o or a module name suffix of the layer",
                )
            )
        if not all(w.is_floating_point() for w in weights):
            raise ModelError(
                Problem(
                    "probe.scorer",
                    "gradient scorers need floating-point weights, and the base is quantised",
                    "probe with model.quantization=none (the scores then transfer to the 4-bit run)",
                )
            )
        per_layer.append(weights)
    return per_layer


@contextlib.contextmanager
def only_these_require_grad(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` only (no wasted backward into the rest) and eval mode; every parameter's
    ``requires_grad`` and the module's training flag are restored on exit, error or not."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    wanted = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        model.eval()
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)


def global_mean_gradient(grads: tuple[torch.Tensor, ...], examples: int) -> tuple[torch.Tensor, ...]:
    """Per-rank gradients of the mean loss over each rank's share -> the gradient of the mean loss over the
    global batch (sum_r n_r g_r / sum_r n_r). A no-op in a single process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return grads
    total = all_reduce_sum(torch.tensor(float(examples), device=grads[0].device))
    for g in grads:
        all_reduce_sum(g.mul_(examples)).div_(total)
    return grads


def gradient_scorer(
    model: nn.Module,
    arch: Architecture,
    batches: Iterable[dict[str, torch.Tensor]],
    cfg,
    device: torch.device,
    *,
    kind: Kind,
) -> LayerStatistic:
    """(1/S) sum_t sum_{W in layer l's targets} stat(W, dL_t/dW), for every layer l (see the module
    docstring)."""
    stat = STATISTICS[kind]
    per_layer = target_weights(model, arch, cfg.lora.targets)
    flat = [w for weights in per_layer for w in weights]
    owner = torch.tensor([i for i, weights in enumerate(per_layer) for _ in weights], device=device)
    regression = model.config.num_labels == 1
    values: list[torch.Tensor] = []
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    examples = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad(), only_these_require_grad(model, flat):
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            loss = compute_loss(model(**batch).logits, labels, regression)
            grads = global_mean_gradient(torch.autograd.grad(loss, flat), labels.shape[0])
            per_weight = torch.stack([stat(w, g) for w, g in zip(flat, grads, strict=True)])
            values.append(
                torch.zeros(arch.num_layers, dtype=torch.float64, device=device).index_add_(
                    0, owner, per_weight
                )
            )
            tokens += batch["attention_mask"].sum()
            examples += labels.shape[0]
    # the statistics are of the global batch's gradient, already identical on every rank: no reduction
    stacked = torch.stack(values) if values else None
    raw = stacked.mean(dim=0).tolist() if stacked is not None else [None] * arch.num_layers
    # the spread of the per-batch values, as for activation norms: whether two layers are told apart
    stderr = (stacked.std(dim=0) / len(values) ** 0.5).tolist() if len(values) >= 2 else None
    return LayerStatistic(
        raw=raw,
        batches=len(values),
        tokens=int(all_reduce_sum(tokens).item()),
        examples=int(all_reduce_sum(examples).item()),
        forward_seconds=time.perf_counter() - start,
        raw_stderr=stderr,
        per_batch=stacked.tolist() if stacked is not None else None,
    )


SCORERS: dict[str, Callable[..., LayerStatistic]] = {
    kind: partial(gradient_scorer, kind=kind) for kind in ("grad_norm", "fisher", "taylor")
}
