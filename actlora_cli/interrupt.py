"""Ctrl-C during training: stop after the step in progress, with a checkpoint, rather than mid-step.

An interrupt that lands inside a step can leave its weights updated and its scheduler not, or its gradients
half accumulated and its dropout draws spent: no state a resume could continue exactly. So the first SIGINT
only asks; the loop stops at the next step boundary, writes checkpoints/last and raises KeyboardInterrupt
(exit 130, with the resume command). In one process a second Ctrl-C stops at once (the checkpoint before it
is kept).

Under torchrun every rank receives the signal, at slightly different moments, and torchrun's agent sends it
again to each worker (and kills those still alive after its shutdown timeout, 30 s by default). The ranks
agree on the stop through one all-reduce of the flag per step, so all stop after the same step and meet in
the checkpoint's barrier (rank 0 writes); a later SIGINT is not taken as a second Ctrl-C there, since the
agent's own would be.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import torch

from . import ui
from .distributed import Dist, all_reduce_sum


@contextlib.contextmanager
def stop_at_step_end(ctx: Dist) -> Iterator[Callable[[], bool]]:
    """Defer SIGINT for the duration; yields ``requested()``: whether a stop was asked for, the same answer on
    every rank (it all-reduces under torchrun, so every rank must call it at the same step). The earlier
    handler is back afterwards. Outside the main thread (where Python delivers no signal) nothing changes."""
    asked = {"flag": False}

    def handler(_signum, _frame) -> None:
        if asked["flag"]:
            if not ctx.enabled:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, keeping the last checkpoint
            return
        asked["flag"] = True
        if ui.main_rank():
            again = "" if ctx.enabled else " (Ctrl-C again stops at once, without it)"
            ui.err.print(f"[bold]Ctrl-C:[/] stopping after this step with a checkpoint{again}")

    def requested() -> bool:
        if not ctx.enabled:
            return asked["flag"]
        flag = torch.tensor(float(asked["flag"]), device=ctx.device)
        return bool(all_reduce_sum(flag) > 0)

    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)
