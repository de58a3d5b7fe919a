"""Layer-wise CKA (``layerwise-cka-lora``): score_l = 1 - linear CKA(X_l, Y_l), where X_l is the
representation entering layer l (for layer 0 the embedding output) and Y_l the one leaving it, one vector per
example.

- Pooling (``probe.pooling``): ``first`` token (position 0; the tool pads on the right), ``last`` non-pad
  token, or ``mean`` over non-pad tokens; ``auto`` is first for encoders and last for decoders, as in the
  reference code.
- Linear CKA on column-centred features, ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``. It is computed
  from feature moments accumulated over the batches in float64 (sum x x^T, sum y y^T, sum x y^T, sum x, sum y,
  n) and centred at the end (``Xc^T Yc = Sxy - n mx my^T``), so memory does not grow with the number of
  examples and the result equals CKA over all examples stacked (not a mean of per-batch CKAs). Under DDP the
  moments are summed across ranks, so every rank gets the single-process value.
- Memory: three d x d float64 matrices per layer on the model's device, 24 d^2 bytes: 14 MB per layer at
  d=768 (DeBERTa-base, 170 MB for 12 layers), 400 MB per layer at d=4096 (Llama-3.1-8B, 12.9 GB for 32).
- Undefined layers (raw value None, score 0, listed in ``undefined_layers``): CKA is 0/0 when either side is
  the same vector for every example, i.e. when the examples' spread around their mean is within the
  activations' own rounding (relative RMS spread <= 16 x the dtype's eps, at most 1e-3: the same vector
  computed in batches of other shapes differs by a few units in the last place, which a bound of one eps
  let through as a spurious "maximally dissimilar" layer), or with fewer than two examples.
  The known case: an encoder with first-token pooling, whose embedding output at position 0 ([CLS] + position
  0 + segment 0) is identical for every example, so layer 0 is undefined, as the reference code excludes it.
  A decoder with first-token pooling is undefined at every layer (causal attention: the first token sees only
  itself), so use ``last`` or ``mean`` there.
- A decoder's last layer (``probe.cka_last``): ``layer`` compares its input with its raw output, as for every
  other layer; ``final_norm`` with the hidden state after the model's final norm, as the reference code does
  (it reads ``hidden_states[-1]``, which transformers returns after that norm).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from ..distributed import all_reduce_sum
from ..modeling import Architecture
from .activation import LayerStatistic
from .hooks import reading_hooks
from .regime import Inference, Regime

Pooling = Literal["first", "last", "mean"]


def resolve_pooling(pooling: str, arch: Architecture) -> Pooling:
    """``auto`` -> first for encoders ([CLS]), last for decoders (the token that has seen the whole input)."""
    if pooling == "auto":
        return "last" if arch.is_decoder else "first"
    return pooling  # type: ignore[return-value]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """(batch, tokens, d) -> (batch, d) float64: one vector per example; pad tokens never count."""
    if how == "first":
        return hidden[:, 0].double()
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(dim=1)  # the last non-pad position, whichever side is padded
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].double()
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return torch.sum(hidden * weights, dim=1, dtype=torch.float64) / mask.sum(dim=1, keepdim=True).double()


class _Moments:
    """Per layer, the float64 moments of the pooled (input, output) pairs; allocated on first use, so the
    feature size comes from the tensors themselves."""

    def __init__(self, num_layers: int, how: Pooling, device: torch.device):
        self.how = how
        self.device = device
        self.mask: torch.Tensor | None = None
        self.pending: dict[int, torch.Tensor] = {}  # layer -> pooled input, until its output arrives
        self.sums: list[dict[str, torch.Tensor] | None] = [None] * num_layers
        self.eps = 0.0  # the activations' rounding, for the degeneracy test

    def set_batch(self, attention_mask: torch.Tensor) -> None:
        self.mask = attention_mask

    def add_input(self, index: int, hidden: torch.Tensor) -> None:
        self.pending[index] = pool(hidden, self.mask, self.how)
        self.eps = max(self.eps, torch.finfo(hidden.dtype).eps)

    def add_output(self, index: int, hidden: torch.Tensor) -> None:
        x, y = self.pending.pop(index), pool(hidden, self.mask, self.how)
        if self.sums[index] is None:
            dx, dy = x.shape[1], y.shape[1]
            shapes = {"xx": (dx, dx), "yy": (dy, dy), "xy": (dx, dy), "x": (dx,), "y": (dy,), "n": ()}
            self.sums[index] = {
                k: torch.zeros(v, dtype=torch.float64, device=self.device) for k, v in shapes.items()
            }
        s = self.sums[index]
        s["xx"].addmm_(x.T, x)
        s["yy"].addmm_(y.T, y)
        s["xy"].addmm_(x.T, y)
        s["x"] += x.sum(dim=0)
        s["y"] += y.sum(dim=0)
        s["n"] += x.shape[0]

    def scores(self) -> list[float | None]:
        """1 - CKA per layer, from the moments summed over DDP ranks (one host sync at the end)."""
        out: list[float | None] = []
        for s in self.sums:
            if s is None:
                out.append(None)
                continue
            for tensor in s.values():
                all_reduce_sum(tensor)
            out.append(one_minus_cka(s, self.eps))
        return out


ROUNDING_ULPS = 16  # how far one vector computed by kernels of other batch shapes may drift, in eps


def one_minus_cka(s: dict[str, torch.Tensor], eps: float) -> float | None:
    """1 - linear CKA from accumulated moments, or None when a side does not vary across examples."""
    n = float(s["n"])
    if n < 2:
        return None
    cxx = s["xx"] - torch.outer(s["x"], s["x"]) / n
    cyy = s["yy"] - torch.outer(s["y"], s["y"]) / n
    cxy = s["xy"] - torch.outer(s["x"], s["y"]) / n
    tolerance = min(ROUNDING_ULPS * eps, 1e-3)
    for centred, raw in ((cxx, s["xx"]), (cyy, s["yy"])):
        # relative RMS spread of the examples around their mean: within rounding, the rows are one vector
        spread2, energy = float(centred.trace()), float(raw.trace())
        if energy <= 0 or spread2 <= (tolerance**2) * energy:
            return None
    denominator = float(torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy))
    if denominator <= 0:
        return None
    return 1.0 - float(torch.linalg.matrix_norm(cxy) ** 2) / denominator


FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm")  # beside the stack, by family


def final_norm(model: nn.Module, arch: Architecture) -> nn.Module:
    """The norm a decoder applies after its last layer (Llama's ``model.norm``)."""
    from ..errors import ModelError, Problem

    backbone = arch.stack_path.rsplit(".", 1)[0]
    for name in FINAL_NORMS:
        path = f"{backbone}.{name}" if "." in arch.stack_path else name
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ModelError(
        Problem(
            "probe.cka_last",
            f"final_norm, but {arch.model_type} has no norm after its last layer ({', '.join(FINAL_NORMS)})",
            "use probe.cka_last=layer (an encoder normalises inside each layer)",
        )
    )


def layer_io_hooks(
    model: nn.Module,
    arch: Architecture,
    on_input: Callable[[int, torch.Tensor], None],
    on_output: Callable[[int, torch.Tensor], None],
    last_output: nn.Module | None = None,
):
    """Every layer's input and output fed to the callbacks (the last layer's output taken from
    ``last_output`` instead, when given); removed on exit, and checked to be gone."""
    points = []
    last = arch.num_layers - 1
    for index in range(arch.num_layers):
        layer = model.get_submodule(arch.layer_path(index))
        points.append((layer, "input", lambda t, i=index: on_input(i, t)))
        source = last_output if index == last and last_output is not None else layer
        points.append((source, "output", lambda t, i=index: on_output(i, t)))
    return reading_hooks(points, "CKA")


def cka_scorer(
    model: nn.Module,
    arch: Architecture,
    batches: Iterable[dict[str, torch.Tensor]],
    cfg,
    device: torch.device,
    regime: Regime | None = None,
) -> LayerStatistic:
    """score_l = 1 - linear CKA(input of layer l, output of layer l) over every probe example, read in the
    forward of each batch (``regime``: inference, or a training step)."""
    moments = _Moments(arch.num_layers, resolve_pooling(cfg.probe.pooling, arch), device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    batches_seen = 0
    start = time.perf_counter()
    # the authors' code compares a decoder's last layer input with the hidden state after the final norm
    last_output = final_norm(model, arch) if cfg.probe.cka_last == "final_norm" else None
    hooks = layer_io_hooks(model, arch, moments.add_input, moments.add_output, last_output)
    with (regime or Inference()).session(model, arch, []) as step, hooks:
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            moments.set_batch(batch["attention_mask"])
            step(batch)
            tokens += batch["attention_mask"].sum()
            batches_seen += 1
        raw = moments.scores()
        examples = next((s["n"] for s in moments.sums if s is not None), torch.zeros((), dtype=torch.float64))
        all_reduce_sum(tokens)
    return LayerStatistic(
        raw=raw,
        batches=batches_seen,
        tokens=int(tokens.item()),
        examples=int(examples.item()),  # already summed over ranks with the moments
        forward_seconds=time.perf_counter() - start,
    )
