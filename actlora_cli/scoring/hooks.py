"""One place for the hook lifecycle every scorer uses: install forward hooks that read a module's input or
output tensor, remove them on exit (also on error), and check that they are gone."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

HookPoint = tuple[nn.Module, Literal["input", "output"], Callable[[torch.Tensor], None]]


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach()


def _first_output(out) -> torch.Tensor:
    return (out[0] if isinstance(out, tuple) else out).detach()


@contextlib.contextmanager
def reading_hooks(points: list[HookPoint], owner: str) -> Iterator[None]:
    """For each (module, 'input' | 'output', callback): call back with the module's first input (or
    ``hidden_states=``) or its output (a tuple's first element) on every forward, inside the block only.
    The tensor is detached: a reading made in a training step's forward must not join its graph."""
    installed = []
    for module, which, callback in points:
        if which == "input":
            handle = module.register_forward_pre_hook(
                lambda _m, args, kwargs, cb=callback: cb(_first_input(args, kwargs)), with_kwargs=True
            )
            installed.append((module._forward_pre_hooks, handle))
        else:
            handle = module.register_forward_hook(lambda _m, _args, out, cb=callback: cb(_first_output(out)))
            installed.append((module._forward_hooks, handle))
    try:
        yield
    finally:
        for _, handle in installed:
            handle.remove()
        leaked = [h.id for registry, h in installed if h.id in registry]
        assert not leaked, f"{owner} hooks still registered after removal: {leaked}"
