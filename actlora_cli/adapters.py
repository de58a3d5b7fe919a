"""The fine-tuning method on the layer plan: LoRA and its peft siblings (AdaLoRA, IA3, VeRA, LoKr, LoHa) on
the selected layers only, or full fine-tuning of the selected layers; the task head is trained too and
everything else is frozen, so autograd stops below the lowest trained layer.

``apply_method`` returns an ``Adapted``: the model to train plus the few things the loop must do per method
(AdaLoRA's orthogonality loss and budget reallocation, how weights are saved and loaded back). The loop
itself knows nothing of methods.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import LoraSection
from .errors import ModelError, Problem
from .modeling import Architecture, target_suffixes


@dataclass
class Adapted:
    """A model prepared for training with ``method`` on ``layers``."""

    model: nn.Module
    method: str
    layers: list[int]
    settings: dict[str, Any] = field(
        default_factory=dict
    )  # what was derived from the run (AdaLoRA's schedule, IA3's modules)

    @property
    def weights_dir(self) -> str:
        """Folder name of the trained weights in a run or checkpoint: a peft adapter, or the whole model."""
        return "model" if self.method == "full" else "adapter"

    # --- what the loop calls -------------------------------------------------------------------------------

    def regularizer(self) -> torch.Tensor | None:
        """An extra loss term for this step, or None. AdaLoRA: its orthogonality penalty on P and Q (peft adds
        it only when labels go through the model's forward, which this loop does not do)."""
        if self.method != "adalora":
            return None
        return self.settings["orth_reg_weight"] * adalora_orthogonality(self._orthogonal_factors)

    @cached_property
    def _orthogonal_factors(self) -> list[tuple[str, nn.Parameter]]:
        """AdaLoRA's P (lora_A) and Q (lora_B) weights, found once rather than by name at every step."""
        return [
            (n, p)
            for n, p in self.model.named_parameters()
            if p.requires_grad and ("lora_A" in n or "lora_B" in n)
        ]

    @property
    def has_step_hook(self) -> bool:
        """Whether ``after_optimizer_step`` does anything (under fp16 the loop then checks, from the grad
        scale, that the step was really taken)."""
        return self.method == "adalora"

    def after_optimizer_step(self, step: int) -> None:
        """AdaLoRA: update importance and reallocate the rank budget (every step, after optimizer.step and
        before zero_grad, with the 0-based index of the step just taken, as peft documents)."""
        if self.method == "adalora":
            self.model.base_model.update_and_allocate(step)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        """Weights saved by ``save`` back into this model (resume)."""
        from safetensors.torch import load_file

        if self.method == "full":
            state: dict[str, torch.Tensor] = {}
            index = folder / "model.safetensors.index.json"
            files = (
                sorted(set(json.loads(index.read_text())["weight_map"].values()))
                if index.is_file()
                else ["model.safetensors"]
            )
            for name in files:
                state.update(load_file(str(folder / name)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            if unexpected or [k for k in missing if k not in tied and not k.endswith(tuple(tied))]:
                raise ModelError(
                    Problem(
                        str(folder),
                        f"checkpoint does not fit the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})",
                        "drop --resume to start afresh",
                    )
                )
            return
        if self.method == "adalora":
            # its saved adapter is cut down to the rank pattern; the full-size weights are in extra_state
            return
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors")))

    def extra_state(self) -> dict[str, Any]:
        """State a method keeps outside its saved weights: AdaLoRA's importance averages, its rank pattern
        and its full-size trainable weights (the saved adapter is cut down to the pattern)."""
        if self.method != "adalora":
            return {}
        allocator = self.model.base_model.rankallocator
        config = self.model.peft_config["default"]
        trainable = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return {
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": config.rank_pattern,
            "trainable": trainable,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.method != "adalora" or not state:
            return
        allocator = self.model.base_model.rankallocator
        # the checkpoint is read onto the CPU; the averages must live beside their parameters again
        devices = {n: p.device for n, p in self.model.named_parameters()}

        def placed(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {n: t.to(devices.get(n, t.device)) for n, t in values.items()}

        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
            placed(state["ipt"]),
            placed(state["exp_avg_ipt"]),
            placed(state["exp_avg_unc"]),
        )
        self.model.peft_config["default"].rank_pattern = state["rank_pattern"]
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in state["trainable"]:
                    param.copy_(state["trainable"][name])

    def describe(self, lora: LoraSection) -> str:
        targets = ", ".join(lora.targets)
        return {
            "lora": f"LoRA r={lora.r} on {targets}",
            "adalora": f"AdaLoRA r {lora.adalora.init_r} -> {lora.adalora.target_r} on {targets}",
            "ia3": f"IA3 on {', '.join(self.settings.get('targets', []))}",
            "vera": f"VeRA r={lora.vera.r} on {targets}",
            "lokr": f"LoKr r={lora.r} on {targets}",
            "loha": f"LoHa r={lora.r} on {targets}",
            "full": "full fine-tuning",
        }[self.method] + f" of layers {self.layers}"


# ---------------------------------------------------------------------------------------------------------
# Building


def apply_method(
    model: nn.Module, arch: Architecture, lora: LoraSection, layers: list[int], total_steps: int = 1
) -> Adapted:
    """Prepare ``model`` for ``lora.method`` on ``layers``; ``total_steps`` scales AdaLoRA's schedule."""
    layers = sorted(layers)
    if lora.method == "full":
        adapted = Adapted(_full(model, arch, layers), "full", layers)
    else:
        from peft import get_peft_model

        config, settings = peft_config(arch, lora, layers, total_steps)
        if lora.method == "ia3":
            if lora.ia3.targets:
                check_targets(model, arch, "lora.ia3.targets", lora.ia3.targets)
        else:
            check_targets(model, arch, "lora.targets", lora.targets)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as err:  # e.g. a method peft cannot put on a 4-bit layer, or on a module type
            key = "lora.ia3.targets" if lora.method == "ia3" else "lora.targets"
            where = key if "target module" in str(err).lower() else "lora.method"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(Problem(where, f"peft cannot apply {lora.method} here: {first}", "")) from None
        adapted = Adapted(wrapped, lora.method, layers, settings)
        if not lora.train_pooler:
            freeze_pooler(wrapped)
    upcast_trainable(adapted.model)
    return adapted


def freeze_pooler(model: nn.Module) -> None:
    """lora.train_pooler=false (the Act-LoRA paper's counts): the pooler stays frozen. It stays among the
    saved modules all the same: DeBERTa's checkpoints hold no pooler, so its weights are drawn at load, and
    the adapter must carry the ones the head was trained on top of."""
    for name, param in model.named_parameters():
        if "pooler" in name.split("."):
            param.requires_grad_(False)


def apply_lora(model: nn.Module, arch: Architecture, lora: LoraSection, layers: list[int]) -> nn.Module:
    """Plain LoRA on ``layers``, whatever lora.method says: the model only, for use outside the training
    loop (the tests build adapted models with it)."""
    return apply_method(model, arch, lora.model_copy(update={"method": "lora"}), layers).model


@contextlib.contextmanager
def lora_inside(
    model: nn.Module, arch: Architecture, lora: LoraSection, layers: list[int]
) -> Iterator[Adapted]:
    """Plain LoRA (lora.targets, r, alpha, dropout) on ``layers`` with the head trainable, as ``apply_method``
    prepares it for training, inside the block only (the probe's training regime). On exit, error or not, the
    adapters are unloaded unmerged, the original head modules put back (peft's ``unload`` would leave the
    trained copies in their place), and every parameter's requires_grad and the training flag restored."""
    heads = {path: model.get_submodule(path) for path in arch.head_modules}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    adapted = apply_method(model, arch, lora.model_copy(update={"method": "lora"}), layers)
    try:
        yield adapted
    finally:
        adapted.model.unload()
        for path, module in heads.items():
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent), name, module)
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


def peft_config(arch: Architecture, lora: LoraSection, layers: list[int], total_steps: int):
    """The peft config of ``lora.method`` restricted to ``layers`` (peft's ``layers_to_transform``; IA3, which
    has none, gets a regex naming the planned layers' modules)."""
    from peft import AdaLoraConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, VeraConfig

    every = layers == list(range(arch.num_layers))
    # peft's own layer filter (matches "<stack>.<i>." in module names)
    placement = {
        "target_modules": target_suffixes(arch, lora.targets),
        "layers_to_transform": None if every else layers,
        "layers_pattern": None if every else arch.layers_pattern,
        "modules_to_save": list(arch.head_modules),
    }
    settings: dict[str, Any] = {}
    method = lora.method
    if method == "lora":
        return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, **placement), settings
    if method == "adalora":
        a = lora.adalora
        # the schedule, given as shares of the run, in steps: warm-up with the full budget, cubic pruning
        # every delta_t steps, then the final budget held fixed (peft requires tinit < total_step - tfinal)
        tinit, tfinal = round(a.tinit * total_steps), round(a.tfinal * total_steps)
        if total_steps >= 2:
            tfinal = max(tfinal, 1)  # the budget is fixed at step total - tfinal: with 0 it never would be
        while tinit and tinit >= total_steps - tfinal:
            tinit -= 1
        while tfinal and tinit >= total_steps - tfinal:
            tfinal -= 1
        settings = {
            "tinit": tinit,
            "tfinal": tfinal,
            "deltaT": max(1, round(a.delta_t * total_steps)),
            "total_step": total_steps,
            "orth_reg_weight": a.orth_reg_weight,
        }
        config = AdaLoraConfig(
            init_r=a.init_r,
            target_r=a.target_r,
            beta1=a.beta1,
            beta2=a.beta2,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            **settings,
            **placement,
        )
        return config, settings
    if method == "vera":
        return VeraConfig(
            r=lora.vera.r, d_initial=lora.vera.d_initial, vera_dropout=lora.dropout, **placement
        ), settings
    if method == "lokr":
        return LoKrConfig(r=lora.r, alpha=lora.alpha, **placement), settings
    if method == "loha":
        return LoHaConfig(r=lora.r, alpha=lora.alpha, **placement), settings
    if method == "ia3":
        targets, feedforward = ia3_targets(arch, lora)
        settings = {"targets": targets, "feedforward": feedforward}
        if every:
            return IA3Config(
                target_modules=targets,
                feedforward_modules=feedforward,
                modules_to_save=placement["modules_to_save"],
            ), settings
        return IA3Config(
            target_modules=_layer_regex(arch, layers, targets),
            feedforward_modules=_layer_regex(arch, layers, feedforward),
            modules_to_save=placement["modules_to_save"],
        ), settings
    raise AssertionError(method)


def check_targets(model: nn.Module, arch: Architecture, key: str, targets: list[str]) -> None:
    """Every target (a logical name or a module-name suffix, see ``target_suffixes``) names, as peft matches
    names, only leaf modules (projections) inside the model's layers; otherwise a ModelError on ``key`` that
    lists what the layers have. (peft would blame the method, or print a whole block it cannot wrap.)"""
    layer = model.get_submodule(arch.layer_path(0))
    modules = [(name, module) for name, module in layer.named_modules() if name]

    def names_projections(suffix: str) -> bool:
        found = [m for name, m in modules if name == suffix or name.endswith("." + suffix)]
        return bool(found) and not any(any(True for _ in m.children()) for m in found)

    bad = [
        target
        for target, suffix in zip(targets, target_suffixes(arch, targets), strict=True)
        if not names_projections(suffix)
    ]
    if bad:
        logical = ", ".join(f"{name} = {arch.relative(name)}" for name in arch.projections)
        linear = ", ".join(name for name, module in modules if isinstance(module, nn.Linear))
        raise ModelError(
            Problem(
                key,
                f"{', '.join(repr(t) for t in bad)} {'names' if len(bad) == 1 else 'name'} no projection in "
                f"the layers of this {arch.model_type} model",
                f"use its projections by name ({logical}) or the name (or suffix) of a module in a layer; "
                f"its linear modules: {linear}",
            )
        )


def ia3_targets(arch: Architecture, lora: LoraSection) -> tuple[list[str], list[str]]:
    """IA3's rescaled modules and which of them are feed-forward: lora.ia3, else peft's default for the model
    type (keys, values and the feed-forward output)."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    targets = target_suffixes(arch, lora.ia3.targets) if lora.ia3.targets else TARGETS.get(arch.model_type)
    if targets is None:
        raise ModelError(
            Problem(
                "lora.ia3.targets",
                f"peft has no IA3 default for model type {arch.model_type}",
                "name the modules, e.g. --set lora.ia3.targets=[k,v]",
            )
        )
    if lora.ia3.feedforward is not None:
        feedforward = target_suffixes(arch, lora.ia3.feedforward)
    else:
        feedforward = [f for f in FEEDFORWARD.get(arch.model_type, []) if f in targets]
    stray = [f for f in feedforward if f not in targets]
    if stray:
        raise ModelError(
            Problem("lora.ia3.feedforward", f"{stray} are not among the IA3 targets {targets}", "")
        )
    return list(targets), list(feedforward)


def _layer_regex(arch: Architecture, layers: list[int], suffixes: list[str]) -> str:
    """A regex (peft full-matches it against module names) for the modules ending in ``suffixes`` inside the
    planned layers: the suffix rule of peft's list form, restricted to those layers."""
    if not suffixes:
        return r"(?!)"  # matches nothing
    stack = re.escape(arch.stack_path)
    layer_alt = "|".join(str(i) for i in layers)
    suffix_alt = "|".join(re.escape(s) for s in suffixes)
    return rf"(?:.*\.)?{stack}\.(?:{layer_alt})\.(?:.*\.)?(?:{suffix_alt})"


def _full(model: nn.Module, arch: Architecture, layers: list[int]) -> nn.Module:
    """Full fine-tuning: every weight when the plan is every layer; otherwise the planned layers' weights and
    the head, the rest frozen (so the backward cut holds as for the adapters)."""
    every = layers == list(range(arch.num_layers))
    prefixes = tuple(f"{arch.layer_path(i)}." for i in layers) + tuple(f"{h}." for h in arch.head_modules)
    for name, param in model.named_parameters():
        param.requires_grad_(every or name.startswith(prefixes))
    return model


def upcast_trainable(model: nn.Module) -> None:
    """fp32 master weights for what the optimizer updates (adapters and the head), nothing else: the frozen
    base stays in its dtype (bf16, or 4-bit under QLoRA), and autocast runs the compute in bf16. This is why
    peft.prepare_model_for_kbit_training is not used: it upcasts every frozen non-4-bit weight to fp32 and
    makes the inputs require grad, which would cost memory and undo the backward cut."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()


def adalora_orthogonality(factors: list[tuple[str, nn.Parameter]]) -> torch.Tensor:
    """AdaLoRA's regulariser, as peft's AdaLoraModel.forward computes it: the mean over the adapted matrices'
    factors (name, weight) of ||P P^T - I||_F (lora_A) and ||Q^T Q - I||_F (lora_B)."""
    total, count = None, 0
    for name, param in factors:
        cov = param @ param.T if "lora_A" in name else param.T @ param
        eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
        term = torch.linalg.matrix_norm(cov - eye, ord="fro")
        total = term if total is None else total + term
        count += 1
    if total is None:
        raise ModelError(Problem("lora.method", "AdaLoRA found no lora_A/lora_B weights to regularise", ""))
    return total / count


def adapted_layers(model: nn.Module, arch: Architecture) -> list[int]:
    """Layer indices that hold trained weights: peft tuner modules, or (full fine-tuning) trainable
    parameters. Read back from the model, for checks and reports."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    marker = f"{arch.layers_pattern}."
    peft_names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    names = peft_names or [n for n, p in model.named_parameters() if p.requires_grad]
    found = set()
    for name in names:
        if marker in name:
            index = name.split(marker, 1)[1].split(".", 1)[0]
            if index.isdigit():
                found.add(int(index))
    return sorted(found)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
