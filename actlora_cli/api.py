"""The small public API, for researchers who keep their own training script and want only the selection:

    from actlora_cli import api

    scores = api.layer_scores(model, batches)                 # any scorer: scorer="cka", "grad_norm", ...
    plan = api.plan(scores, k=3)                              # or tau=0.75, strategy="last", layers=[...]
    peft_model = get_peft_model(model, api.lora_config(model, plan))

``batches`` is any iterable of dicts the model accepts (input_ids, attention_mask, ...; labels for the
gradient scorers), e.g. a DataLoader with a collator. Nothing here reads a config file or writes a run folder;
the command line's stages are built on the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .config import Config
from .modeling import locate, target_suffixes
from .scoring import SCORERS
from .selection import Plan, by_strategy, explicit, min_max, min_max_stderr, select

__all__ = ["layer_scores", "lora_config", "plan"]


def layer_scores(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    scorer: str = "activation_norm",
    device: torch.device | str | None = None,
    **probe: Any,
) -> dict[str, Any]:
    """Score every layer of a Hugging Face sequence classifier over ``batches``: ``raw`` (the scorer's
    statistic per layer, None where undefined), ``scores`` (min-max normalised, what plans rank),
    ``score_stderr`` (activation norms) and ``undefined_layers``. ``probe`` takes the probe section's other
    settings (site="pre_attn", pooling="mean", ...; see the README's config reference)."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer '{scorer}'; scorers: {', '.join(SCORERS)}")
    cfg = Config.model_validate({"probe": {"scorer": scorer, **probe}})
    if cfg.probe.regime != "inference":
        # a training probe trains on the task (its loss, its head, train.* settings): the probe stage has them
        raise ValueError("layer_scores probes in the inference regime; for regime='training' use run_probe")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    stat = SCORERS[scorer](model, locate(model), iter(batches), cfg, device)
    scores, flat = min_max(stat.raw)
    return {
        "scorer": scorer,
        "raw": stat.raw,
        "scores": scores,
        "flat": flat,
        "score_stderr": min_max_stderr(stat.raw, stat.raw_stderr),
        "undefined_layers": [i for i, v in enumerate(stat.raw) if v is None],
        "batches_seen": stat.batches,
    }


def plan(
    scores: dict[str, Any] | list[float] | None = None,
    k: int | str | None = None,
    tau: float | None = None,
    strategy: str = "scores",
    seed: int = 0,
    layers: list[int] | None = None,
    num_layers: int | None = None,
) -> Plan:
    """A layer plan: the top-k of ``scores`` (``layer_scores``' result or a plain list), the least k whose
    cumulative importance reaches ``tau``, k layers by ``strategy`` (last, first, uniform, random with
    ``seed``: no scores needed, give ``num_layers``), or the ``layers`` you name."""
    values = scores["scores"] if isinstance(scores, dict) else scores
    undefined = scores.get("undefined_layers", ()) if isinstance(scores, dict) else ()
    if layers is not None:
        return explicit(layers, values, undefined)
    if tau is not None:
        return select(values, tau=tau, undefined=undefined)
    if k is None:
        raise ValueError("give k, tau or layers")
    count = num_layers if num_layers is not None else (len(values) if values is not None else None)
    if count is None:
        raise ValueError("a plan by position without scores needs num_layers")
    return by_strategy(strategy, k, count, seed, values, undefined)


def lora_config(
    model: nn.Module,
    layer_plan: Plan | list[int],
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    targets: tuple[str, ...] = ("q", "v"),
    **extra: Any,
):
    """A peft ``LoraConfig`` putting LoRA on the plan's layers only (``layers_to_transform``), on the
    ``targets`` projections (q, k, v, o or module-name suffixes, resolved for the model's family), with the
    task head trained and saved (``modules_to_save``). ``extra`` goes to LoraConfig as is."""
    from peft import LoraConfig, TaskType

    arch = locate(model)
    layers = sorted(layer_plan.layers if isinstance(layer_plan, Plan) else layer_plan)
    every = layers == list(range(arch.num_layers))
    settings = {
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": target_suffixes(arch, list(targets)),
        "layers_to_transform": None if every else layers,
        "layers_pattern": None if every else arch.layers_pattern,
        "modules_to_save": list(arch.head_modules),
        "task_type": TaskType.SEQ_CLS,
        **extra,
    }
    return LoraConfig(**settings)
