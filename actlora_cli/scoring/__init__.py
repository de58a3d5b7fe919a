"""Layer scorers. Every scorer is called as ``scorer(model, arch, batches, cfg, device)`` with the frozen
model, its Architecture, an iterable of S probe batches (with labels) and the resolved Config, and returns a
LayerStatistic: one raw value per layer (None where the scorer cannot score a layer). The probe stage
normalises and writes them, so `rank` and `train` treat every scorer alike."""

from __future__ import annotations

from collections.abc import Callable

from . import gradient
from .activation import LayerStatistic, activation_norm_scorer, activation_norms
from .cka import cka_scorer
from .weight_delta import weight_delta_scorer

SCORERS: dict[str, Callable[..., LayerStatistic]] = {
    "activation_norm": activation_norm_scorer,
    "cka": cka_scorer,
    **gradient.SCORERS,  # grad_norm, fisher, taylor: one function, parameterised
    "weight_delta": weight_delta_scorer,
}

__all__ = ["SCORERS", "LayerStatistic", "activation_norms"]
