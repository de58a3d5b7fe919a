"""LoRA on the plan: adapters on the selected layers' projections only, the task head trainable, everything
else frozen (so autograd stops below the lowest adapted layer)."""

from __future__ import annotations

import torch
from torch import nn

from .config import LoraSection
from .modeling import Architecture, target_suffixes


def apply_lora(model: nn.Module, arch: Architecture, lora: LoraSection, layers: list[int]) -> nn.Module:
    """Wrap ``model`` with peft LoRA on ``layers`` (all layers when it lists every one)."""
    from peft import LoraConfig, get_peft_model

    every = sorted(layers) == list(range(arch.num_layers))
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_suffixes(arch, lora.targets),
        # peft's own layer filter (matches "<stack>.<i>." in module names)
        layers_to_transform=None if every else sorted(layers),
        layers_pattern=None if every else arch.layers_pattern,
        modules_to_save=list(arch.head_modules),
    )
    wrapped = get_peft_model(model, config)
    upcast_trainable(wrapped)
    return wrapped


def upcast_trainable(model: nn.Module) -> None:
    """fp32 master weights for what the optimizer updates (LoRA and the head), nothing else: the frozen base
    stays in its dtype (bf16, or 4-bit under QLoRA), and autocast runs the compute in bf16. This is why
    peft.prepare_model_for_kbit_training is not used: it upcasts every frozen non-4-bit weight to fp32 and
    makes the inputs require grad, which would cost memory and undo the backward cut."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()


def adapted_layers(model: nn.Module, arch: Architecture) -> list[int]:
    """Layer indices that hold LoRA modules (read back from the wrapped model, for checks and reports)."""
    found = set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and f"{arch.layers_pattern}." in name:
            index = name.split(f"{arch.layers_pattern}.", 1)[1].split(".", 1)[0]
            if index.isdigit():
                found.add(int(index))
    return sorted(found)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
