"""Per-step phase timing and memory readings for the training loop (Table 7's forward / backward / optimizer
split, and memory after forward, at the backward's peak and after the step), and the host's load from other
work while a run is timed."""

from __future__ import annotations

import os
import time
from itertools import pairwise
from pathlib import Path
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


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process) from /proc; None where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])  # utime + stime


class HostLoad:
    """How busy the machine was with other work while something was timed: the share of its CPU capacity
    that other processes (or the hypervisor) took, and the load average at the start and the end. Times
    taken on a busy machine are not comparable with times taken on an idle one; compare warns on that.
    Under torchrun the other ranks count as other processes."""

    def __init__(self) -> None:
        self.ticks, self.started = _cpu_ticks(), time.perf_counter()
        self.load_start = _load_average()

    def others_share(self) -> float | None:
        after, seconds = _cpu_ticks(), time.perf_counter() - self.started
        if self.ticks is None or after is None or seconds <= 0:
            return None
        others = (after[0] - self.ticks[0]) - (after[1] - self.ticks[1])
        return max(others, 0) / (os.sysconf("SC_CLK_TCK") * seconds * (os.cpu_count() or 1))

    def report(self) -> dict[str, Any]:
        share = self.others_share()
        return {
            "cpu_count": os.cpu_count(),
            "others_cpu_share": None if share is None else round(share, 4),
            "load_average_start": self.load_start,
            "load_average_end": _load_average(),
        }


def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
