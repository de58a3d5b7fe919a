"""How a probe batch goes through the model (``probe.regime``); the scorers read what they need on the way.

- ``inference`` (the default; Act-LoRA L276: "the probe phase is executed in inference mode"): the frozen
  model in eval mode (no dropout), a forward under ``torch.inference_mode``; for the gradient scorers a
  forward and ``torch.autograd.grad`` of the batch's mean loss with respect to the projections' weights, so
  no ``.grad`` is ever written.
- ``training`` (L334 and L416: statistics "collected from probing the models for 200 optimizer steps", the
  backward pass "collecting the attention-projection gradient"): every probe batch is one real optimizer
  step of LoRA on every layer (lora.targets, r, alpha, dropout; the task head trained too), taken by the
  training loop's own ``train.step_on``. Train mode, so the model's own dropout (hidden, attention
  probabilities) and LoRA's dropout (lora.dropout) are on as in ``actlora train``; AdamW at a constant
  train.lr (no warm-up or decay) with train.weight_decay, train.max_grad_norm clipping of the trained
  parameters and train.precision; one micro-batch per step (train.grad_accum is not applied). The forward
  readers (activation norms, CKA) see the forward of each step, so at step s the weights after s-1 updates;
  the gradient scorers read the gradient of that step's loss with respect to the projections' base weights W
  (equal to the gradient with respect to the effective weight W + s B A), from the same backward that
  trains the adapters. The generators are seeded with probe.seed first (the adapters' initial A, the dropout
  masks; the head's trained copy starts from the loaded head), and the adapters are removed afterwards: the
  model is handed back as it came.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import all_reduce_sum
from ..losses import compute_loss
from ..modeling import Architecture

# one probe batch (on the device, with labels) through the model -> the gradients of the weights the session
# was opened for, as the batch's global mean loss gives them (empty when none were asked for)
Step = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, ...]]


class Regime(Protocol):
    """``session(model, arch, weights)``: a context inside which ``step(batch)`` runs one probe batch."""

    name: str

    def session(
        self, model: nn.Module, arch: Architecture, weights: list[nn.Parameter]
    ) -> contextlib.AbstractContextManager[Step]: ...


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


class Inference:
    """probe.regime=inference: the frozen model, eval mode."""

    name = "inference"

    @contextlib.contextmanager
    def session(self, model: nn.Module, arch: Architecture, weights: list[nn.Parameter]) -> Iterator[Step]:
        if not weights:
            model.eval()
            with torch.inference_mode():

                def forward(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
                    model(**{k: v for k, v in batch.items() if k != "labels"})
                    return ()

                yield forward
            return
        regression = model.config.num_labels == 1
        with torch.inference_mode(False), torch.enable_grad(), only_these_require_grad(model, weights):

            def gradients(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                loss = compute_loss(model(**inputs).logits, batch["labels"], regression)
                return global_mean_gradient(torch.autograd.grad(loss, weights), batch["labels"].shape[0])

            yield gradients


@dataclass
class Training:
    """probe.regime=training: each batch one optimizer step of LoRA on every layer (see the module
    docstring). ``cfg`` is the resolved Config; ``spec`` the task's; ``data`` the probe's split (the Run
    holds it; the steps are handed their batches already collated)."""

    cfg: Any
    spec: Any
    data: Any
    name: str = "training"

    @contextlib.contextmanager
    def session(self, model: nn.Module, arch: Architecture, weights: list[nn.Parameter]) -> Iterator[Step]:
        # train imports the stages that import the scorers: imported here, when a training probe starts
        from ..adapters import lora_inside
        from ..checkpoints import seed_everything
        from ..distributed import setup
        from ..errors import Problem
        from ..timing import PhaseTimer
        from ..train import NonFiniteLoss, probe_run, step_on

        cfg, ctx = self.cfg, setup()
        steps = cfg.probe.max_steps if cfg.probe.steps == "auto" else cfg.probe.steps
        seed_everything(cfg.probe.seed)
        with lora_inside(model, arch, cfg.lora, list(range(arch.num_layers))) as adapted:
            for w in weights:  # frozen by peft; their gradient is read, they are never stepped
                w.requires_grad_(True)
            run = probe_run(cfg, ctx, self.spec, arch, adapted, self.data, weights, steps)
            timer = PhaseTimer(ctx.device)
            run.ddp_model.train()
            taken = 0

            def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
                nonlocal taken
                batch = dict(batch)  # step_on takes the labels out of it
                size = all_reduce_sum(torch.tensor(batch["labels"].shape[0], device=ctx.device))
                # fp16: the backward's gradients are scaled by the scale in force before the step
                scale = run.scaler.get_scale() if run.scaler is not None else 1.0
                try:
                    step_on(run, [batch], [[]], int(size), taken, timer)
                except NonFiniteLoss as exc:
                    raise NonFiniteLoss(Problem(
                        f"probe step {taken + 1}",
                        exc.problems[0].what,
                        "lower train.lr, use train.precision=fp32/bf16, or probe with probe.regime=inference",
                    )) from None  # fmt: skip
                taken += 1
                grads = []
                for w in weights:  # the optimizer does not own them, so nothing else clears them
                    grads.append(w.grad / scale if scale != 1.0 else w.grad)
                    w.grad = None
                return tuple(grads)

            try:
                yield step
            finally:
                for w in weights:
                    w.grad = None
