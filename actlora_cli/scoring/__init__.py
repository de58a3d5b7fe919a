"""Layer scorers. Each takes the frozen model, its Architecture and an iterable of batches, and returns one
raw statistic per layer; the probe stage normalises and writes them, so `rank` treats every scorer alike."""

from __future__ import annotations

from collections.abc import Callable

from .activation import activation_norms

SCORERS: dict[str, Callable] = {"activation_norm": activation_norms}

__all__ = ["SCORERS", "activation_norms"]
