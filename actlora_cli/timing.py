"""Per-step phase timing and memory readings for the training loop (Table 7's forward / backward / optimizer
split, and memory after forward, at the backward's peak and after the step)."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

import torch


class PhaseTimer:
    """Step phases timed with CUDA events on GPU, a synchronous clock on CPU.

    The loop calls ``start()``, then ``mark()`` after each forward and each backward (one pair per
    micro-batch) and after the optimizer step. Events are only recorded mid-step and read once at its end
    (``phases_ms``), so timing adds no host sync to the step on GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[Any] = []

    def start(self) -> None:
        self.marks = []
        self.mark()
        if self.cuda:
            # the peak is per step: the loop keeps the run's maximum
            torch.cuda.reset_peak_memory_stats(self.device)

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def memory(self, peak: bool = False) -> float | None:
        """MiB allocated now (or at the peak since ``start``) on CUDA; None on CPU, which has no such
        counter."""
        if not self.cuda:
            return None
        fn = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
        return round(fn(self.device) / 2**20, 1)

    def durations_ms(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in pairwise(self.marks)]
        return [1000 * (b - a) for a, b in pairwise(self.marks)]

    def phases_ms(self) -> tuple[float, float, float]:
        """(forward, backward, optimizer) ms of the step; marks: start, fwd, bwd, fwd, bwd, ..., opt."""
        durations = self.durations_ms()
        return sum(durations[0:-1:2]), sum(durations[1:-1:2]), durations[-1]
