"""The frozen-prefix cache: past the backward cut, the embeddings and the layers below the lowest trained
layer compute the same output for an example every epoch (once their dropout is off). Their output, the hidden
states entering the lowest trained layer, is stored once per example, unpadded, the first time the example is
seen, and replayed afterwards: the prefix layers are swapped for pass-throughs and the stored states are put
in at the lowest trained layer's input.

Per example (an offset into one flat [tokens, hidden] store), so it works with any batch order, dynamic
padding and DDP (each rank fills what it sees). A batch replays only when every one of its examples is stored;
otherwise it runs the prefix and stores what is missing. The store lives in host memory (pinned on CUDA) or in
a memory-mapped file for tasks larger than memory.

Replay equals recomputation because (1) right padding: the stored rows are exactly the real tokens, and pad
positions, masked as attention keys, cannot change real positions' outputs; (2) the prefix has no dropout:
``disable_prefix_dropout`` turns it off, and the run records that. Storing in bf16/fp16 rounds the states;
fp32 storage reproduces the uncached run (tests/test_prefix_cache.py)."""

from __future__ import annotations

import itertools
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import ui
from .errors import ConfigError, Problem
from .modeling import Architecture, torch_dtype


def _inner(model: nn.Module) -> nn.Module:
    """The Hugging Face model under DDP and peft wrappers (arch paths are its paths)."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prefix_modules(model: nn.Module, arch: Architecture, lowest: int) -> list[tuple[str, nn.Module]]:
    """The backbone's modules that run before layer ``lowest``: everything of the backbone outside the stack
    (the embeddings; also modules after the stack, such as a pooler, which hold no dropout), plus layers <
    lowest."""
    inner = _inner(model)
    backbone = arch.stack_path.split(".", 1)[0]
    stack_prefix = arch.stack_path + "."
    out = []
    for name, module in inner.named_modules():
        if not name.startswith(backbone + ".") and name != backbone:
            continue
        if name.startswith(stack_prefix):
            index = name[len(stack_prefix) :].split(".", 1)[0]
            if not index.isdigit() or int(index) >= lowest:
                continue
        out.append((name, module))
    return out


def trained_in_prefix(model: nn.Module, arch: Architecture, lowest: int) -> list[str]:
    """Names of the prefix's parameters that require a gradient (none, if the prefix really is frozen)."""
    return [
        f"{name}.{p_name}"
        for name, module in prefix_modules(model, arch, lowest)
        for p_name, p in module.named_parameters(recurse=False)
        if p.requires_grad
    ]


def disable_prefix_dropout(model: nn.Module, arch: Architecture, lowest: int) -> int:
    """Set every dropout in the frozen prefix to zero (nn.Dropout modules and the float rates attention
    modules keep, e.g. Llama's ``attention_dropout``); returns how many were non-zero."""
    changed = 0
    for _, module in prefix_modules(model, arch, lowest):
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for attr in ("attention_dropout", "dropout_prob", "attn_dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, attr, 0.0)
    return int(changed)


class _PassThrough(nn.Module):
    """Stands in for a prefix layer during replay: returns its input in the layer's output format."""

    def __init__(self, tuple_len: int | None):
        super().__init__()
        self.tuple_len = tuple_len

    def forward(self, *args: Any, **kwargs: Any):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if self.tuple_len is None else (hidden,) + (None,) * (self.tuple_len - 1)


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class PrefixCache:
    """Stored inputs of layer ``lowest`` for every example of a split (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        arch: Architecture,
        lowest: int,
        lengths: list[int],
        dtype: torch.dtype,
        store: str = "memory",
        path: Path | None = None,
        pin: bool = False,
    ):
        self.lowest, self.dtype, self.pin = lowest, dtype, pin
        self.lengths = list(lengths)
        self.offsets = [0, *itertools.accumulate(self.lengths)]  # plain ints: read per row on the hot path
        tokens, hidden = self.offsets[-1], arch.hidden_size
        self.path = path if store == "disk" else None
        if store == "disk":
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            np_dtype = np.float32 if dtype == torch.float32 else np.int16  # 16-bit floats travel as raw int16
            self._memmap = np.memmap(path, dtype=np_dtype, mode="w+", shape=(max(tokens, 1), hidden))
            # the file goes when the cache does, also when the run stops on an error
            weakref.finalize(self, path.unlink, missing_ok=True)
            raw = torch.from_numpy(self._memmap)
            self.data = raw if dtype == torch.float32 else raw.view(dtype)
        else:
            self.data = torch.empty((max(tokens, 1), hidden), dtype=dtype, pin_memory=pin)
        self.filled = torch.zeros(len(lengths), dtype=torch.bool)
        self.stack: nn.ModuleList = _inner(model).get_submodule(arch.stack_path)
        self.out_tuple_len: int | None = None
        self.format_known = lowest == 0  # no prefix layer to stand in for
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    @contextmanager
    def around(self, indices: list[int]):
        """Wrap one forward over the examples ``indices`` (this rank's rows, in batch order)."""
        if self.format_known and bool(self.filled[indices].all()):
            self.hits += 1
            with self._replay(indices):
                yield
        else:
            self.misses += 1
            with self._record(indices):
                yield

    @contextmanager
    def _record(self, indices: list[int]):
        def capture(_module, args, kwargs):
            hidden = _hidden_arg(args, kwargs)
            # run_train refuses a trained prefix up front (trained_in_prefix); this would be a bug
            assert not hidden.requires_grad, "the cached prefix is being trained"
            rows = hidden.detach().to("cpu", self.dtype)
            for row, i in enumerate(indices):
                if not self.filled[i]:
                    start, n = self.offsets[i], self.lengths[i]
                    self.data[start : start + n] = rows[row, :n]
                    self.filled[i] = True

        def output_format(_module, _args, output):
            self.out_tuple_len = len(output) if isinstance(output, tuple) else None
            self.format_known = True

        handles = [self.stack[self.lowest].register_forward_pre_hook(capture, with_kwargs=True)]
        if not self.format_known:
            handles.append(self.stack[0].register_forward_hook(output_format))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def _replay(self, indices: list[int]):
        def inject(_module, args, kwargs):
            hidden = _hidden_arg(args, kwargs)
            batch = torch.zeros(
                (len(indices), hidden.shape[1], hidden.shape[2]), dtype=self.dtype, pin_memory=self.pin
            )
            for row, i in enumerate(indices):
                start, n = self.offsets[i], self.lengths[i]
                batch[row, :n] = self.data[start : start + n]
            replayed = batch.to(hidden.device, hidden.dtype, non_blocking=True)
            if args:
                return (replayed, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replayed}

        originals = [self.stack[i] for i in range(self.lowest)]
        for i in range(self.lowest):
            self.stack[i] = _PassThrough(self.out_tuple_len)
        handle = self.stack[self.lowest].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for i, layer in enumerate(originals):
                self.stack[i] = layer

    def report(self) -> dict[str, Any]:
        return {
            "layers_cached": self.lowest,
            "dtype": str(self.dtype).replace("torch.", ""),
            "mib": round(self.nbytes / 2**20, 2),
            "examples_stored": int(self.filled.sum()),
            "forwards_replayed": self.hits,
            "forwards_computed": self.misses,
        }

    def close(self) -> None:
        """Drop the store (and its file: it is a cache, not an artefact)."""
        self.data = torch.empty(0)
        if self.path is not None:
            del self._memmap
            self.path.unlink(missing_ok=True)


def frozen_prefix(
    model: nn.Module,
    arch: Architecture,
    layers: list[int],
    train_cfg,
    lengths: list[int],
    amp_dtype: torch.dtype | None,
    path: Path,
    device: torch.device,
    method: str,
) -> tuple[PrefixCache | None, dict[str, Any]]:
    """The policy for the frozen prefix below the plan's lowest layer: its dropout (kept, unless the cache is
    on or train.frozen_dropout is off) and, with train.prefix_cache, the cache. Returns the cache (or None)
    and the record the summary keeps. A prefix with a trained parameter in it cannot be cached: refused up
    front."""
    lowest = min(layers)
    dtype_name = train_cfg.prefix_cache_dtype
    # auto stores what the prefix computes: the autocast dtype, or fp32 when the run has none
    dtype = (amp_dtype or torch.float32) if dtype_name == "auto" else torch_dtype(dtype_name, device)
    store, why = train_cfg.prefix_cache, None
    if store == "auto":
        store, why = auto_store(model, arch, lowest, train_cfg.epochs, lengths, dtype)
    keep_dropout = train_cfg.frozen_dropout and store == "off"
    record: dict[str, Any] = {
        "lowest_trained_layer": lowest,
        # the cache's setting, what it resolved to and why (auto decides per run)
        "cache_setting": train_cfg.prefix_cache,
        "cache_store": store,
        **({"cache_choice": why} if why else {}),
        "dropout": keep_dropout,
        # replay must equal recomputation, so a cached prefix runs without dropout (and the run says how many
        # dropout rates that zeroed)
        "dropout_rates_zeroed": 0 if keep_dropout else disable_prefix_dropout(model, arch, lowest),
    }
    if store == "off":
        return None, record
    trained = trained_in_prefix(model, arch, lowest)
    if trained:
        raise ConfigError(
            [
                Problem(
                    "train.prefix_cache",
                    f"the frozen prefix is not frozen: {trained[0]} is trained ({method} on layers "
                    f"{layers}), so its output changes and cannot be cached",
                    "use a plan that leaves the embeddings and the lowest layers frozen, "
                    "or train.prefix_cache=off",
                )
            ]
        )
    if lowest == 0:
        ui.note("[yellow]note:[/] the plan includes layer 0, so the prefix cache skips only the embeddings")
    cache = PrefixCache(model, arch, lowest, lengths, dtype, store, path, pin=device.type == "cuda")
    return cache, record


def auto_store(
    model: nn.Module, arch: Architecture, lowest: int, epochs: float, lengths: list[int], dtype: torch.dtype
) -> tuple[str, str]:
    """train.prefix_cache=auto: 'memory' when replay can pay and the store fits, else 'off'; and why."""
    if epochs <= 1:
        return "off", "one epoch: nothing would be replayed"
    if lowest == 0:
        return "off", "the plan adapts layer 0: no frozen layer to skip"
    if trained_in_prefix(model, arch, lowest):
        return "off", "the method trains parameters below the lowest planned layer"
    need = sum(lengths) * arch.hidden_size * torch.empty((), dtype=dtype).element_size()
    free = available_memory()
    if free is not None and need > free / 4:
        mib = need / 2**20, free / 2**20
        return "off", f"the store needs {mib[0]:.0f} MiB, over a quarter of the {mib[1]:.0f} MiB free"
    return "memory", f"more than one epoch; the store needs {need / 2**20:.1f} MiB of host memory"


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
