"""Weight delta (Act-LoRA section 7.5): how far a trained LoRA adapter moved each layer,
``sum over the layer's adapted modules of ||s B A||_F`` with s = alpha / r (alpha / sqrt(r) under rsLoRA),
read from a peft adapter folder (``probe.adapter``: adapter_config.json + adapter_model.safetensors), usually
one trained with LoRA on every layer. It needs no data: the probe batches are not consumed.

- The modules summed are those the adapter adapted (its own ``target_modules``), not ``lora.targets``.
- Layer indices are parsed from the tensor names (``...<layers_pattern>.<i>.<module>.lora_A.weight``); a layer
  the adapter does not touch is undefined (None: score 0, listed in ``undefined_layers``).
- r is each module's own rank, read from lora_A's shape, so ``rank_pattern`` is honoured; alpha follows
  ``alpha_pattern`` with peft's own key matching (``peft.utils.other.get_pattern_key``).
- ||B A||_F is computed as sqrt(sum((B^T B) * (A A^T))) in float64: r x r products, never the d x d delta.
- Not supported (an error says so): non-LoRA adapters and DoRA, whose update also rescales the base weight.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, Problem
from ..modeling import Architecture
from .activation import LayerStatistic

PEFT_PREFIX = "base_model.model."


def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, the adapter's tensors on the CPU); problems name probe.adapter."""
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise ModelError(
            Problem(
                "probe.adapter",
                f"'{folder}' is a {config.get('peft_type')} adapter, not LoRA",
                "give a LoRA adapter (actlora train --k all writes one)",
            )
        )
    if config.get("use_dora"):
        raise ModelError(
            Problem(
                "probe.adapter",
                f"'{folder}' is a DoRA adapter: its update is not s B A",
                "give a plain LoRA adapter",
            )
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(
            Problem(
                "probe.adapter",
                f"'{folder}' has no adapter_model.safetensors",
                "save the adapter with peft's save_pretrained (safetensors is its default)",
            )
        )
    return config, load_file(str(weights))


def delta_norm(a: torch.Tensor, b: torch.Tensor, scaling: float) -> float:
    """||scaling * B @ A||_F via the r x r Gram matrices:
    ||BA||_F^2 = tr(A^T B^T B A) = sum((B^T B) * (A A^T))."""
    a, b = a.double(), b.double()
    return abs(scaling) * math.sqrt(max(0.0, float(((b.T @ b) * (a @ a.T)).sum())))


def adapter_delta_norms(
    folder: Path, model: nn.Module, arch: Architecture
) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Per layer, sum over its adapted modules of ||s B A||_F (None for layers the adapter leaves alone); and
    per projection the same norm of that module alone, keyed by its logical name (q, v, ...) or, for a module
    that is none of those, by its path inside the layer."""
    from peft.utils.other import get_pattern_key

    config, tensors = read_adapter(folder)
    alpha_pattern = config.get("alpha_pattern") or {}
    key = re.compile(
        rf"^(?P<module>(?:.*?\.)?{re.escape(arch.layers_pattern)}\.(?P<layer>\d+)\.(?P<rel>.+))"
        r"\.lora_A\.weight$"
    )
    raw: list[float | None] = [None] * arch.num_layers
    by_target: dict[str, list[float | None]] = {}
    logical = {path: name for name, paths in arch.projections.items() for path in paths}
    for name, a in tensors.items():
        match = key.match(name.removeprefix(PEFT_PREFIX))
        if match is None:
            continue
        layer, module = int(match["layer"]), match["module"]
        if layer >= arch.num_layers:
            raise ModelError(
                Problem(
                    "probe.adapter",
                    f"'{folder}' adapts layer {layer}, but this "
                    f"{arch.model_type} model has {arch.num_layers} layers",
                    "give an adapter trained on this model",
                )
            )
        base = _base_shape(model, f"{arch.layer_path(layer)}.{match['rel']}")
        b = tensors.get(name.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None or base != (b.shape[0], a.shape[1]):
            raise ModelError(
                Problem(
                    "probe.adapter",
                    f"'{folder}' does not fit this model at {module} (adapter "
                    f"B {tuple(b.shape) if b is not None else 'missing'} x A {tuple(a.shape)}, "
                    f"model weight {base or 'missing'})",
                    "give an adapter trained on this model",
                )
            )
        r = a.shape[0]  # the module's own rank (rank_pattern is already in the shapes)
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
        scaling = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        norm = delta_norm(a, b, scaling)
        raw[layer] = (raw[layer] or 0.0) + norm
        projection = logical.get(f"{arch.layer_path(layer)}.{match['rel']}", match["rel"])
        by_target.setdefault(projection, [None] * arch.num_layers)[layer] = norm
    if all(v is None for v in raw):
        raise ModelError(
            Problem(
                "probe.adapter",
                f"'{folder}' holds no LoRA weights in {arch.stack_path}.<i>",
                "give an adapter trained on this model",
            )
        )
    return raw, by_target


def _base_shape(model: nn.Module, path: str) -> tuple[int, int] | None:
    """(out, in) features of the adapted module in this model (a 4-bit weight's own shape is packed)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return (module.out_features, module.in_features)
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if weight is not None and weight.dim() == 2 else None


def weight_delta_scorer(
    model: nn.Module, arch: Architecture, batches, cfg, device: torch.device, regime=None
) -> LayerStatistic:
    """The registry's entry: reads ``probe.adapter``; ``batches`` is left unconsumed and ``regime`` unused (no
    data is read, so there is nothing to run; the config refuses probe.regime=training for this scorer)."""
    start = time.perf_counter()
    raw, by_target = adapter_delta_norms(Path(cfg.probe.adapter).expanduser(), model, arch)
    return LayerStatistic(
        raw=raw,
        batches=0,
        tokens=0,
        examples=0,
        forward_seconds=time.perf_counter() - start,
        by_target=by_target,
    )
