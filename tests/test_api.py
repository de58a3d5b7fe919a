"""The public API (actlora_cli.api) in someone else's training script: scores over their batches with any
scorer, a plan, a LoraConfig, and transformers' Trainer + peft training exactly the planned layers; the scores
equal the probe stage's own computation on the same batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actlora_cli import api
from actlora_cli.adapters import adapted_layers
from actlora_cli.modeling import locate
from actlora_cli.scoring.activation import activation_norms
from actlora_cli.selection import min_max

TEXTS = ["a fine film", "dull and long", "the plot was a delight of a story", "bad", "good acting", "no"] * 4
LABELS = [1, 0, 1, 0, 1, 0] * 4


def _model_and_batches(model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    batches = []
    for i in range(0, len(TEXTS), 8):
        batch = dict(tok(TEXTS[i : i + 8], padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor(LABELS[i : i + 8])
        batches.append(batch)
    return tok, model, batches


def test_scores_equal_the_probe_stage_computation(tiny_models):
    _, model, batches = _model_and_batches(tiny_models["bert"])
    scores = api.layer_scores(model, batches)
    arch = locate(model)
    reference = activation_norms(model, arch, iter(batches), "post_attn", torch.device("cpu"))
    assert scores["raw"] == pytest.approx(reference.raw)
    assert scores["scores"] == pytest.approx(min_max(reference.raw)[0])
    assert scores["batches_seen"] == 3
    assert len(api.layer_scores(model, batches, scorer="grad_norm")["scores"]) == arch.num_layers
    with pytest.raises(ValueError, match="unknown scorer"):
        api.layer_scores(model, batches, scorer="nope")


def test_plans_from_the_api():
    scores = {"scores": [0.1, 1.0, 0.0, 0.7], "undefined_layers": []}
    assert api.plan(scores, k=2).layers == [1, 3]
    assert api.plan(scores, tau=0.9).layers == [1, 3]  # C(1) = 1/1.8, C(2) = 1.7/1.8 >= 0.9
    assert api.plan(None, k=2, strategy="last", num_layers=4).layers == [2, 3]
    assert api.plan(scores, layers=[0, 2]).layers == [0, 2]
    with pytest.raises(ValueError):
        api.plan(scores)


def test_trainer_with_peft_trains_exactly_the_plan(tmp_path, tiny_models):
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    tok, model, batches = _model_and_batches(tiny_models["bert"])
    plan = api.plan(api.layer_scores(model, batches), k=2)
    arch = locate(model)  # before peft wraps the model's modules in place
    peft_model = get_peft_model(model, api.lora_config(model, plan, r=4, alpha=8))
    assert adapted_layers(peft_model, arch) == plan.layers

    rows = [dict(tok(t), labels=y) for t, y in zip(TEXTS, LABELS, strict=True)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, seed=0,
    )  # fmt: skip
    from transformers import DataCollatorWithPadding

    Trainer(
        model=peft_model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok)
    ).train()
    # LoRA's B starts at zero: after training it moved in the planned layers, and no adapter exists elsewhere
    moved = sorted(
        {int(n.split(".layer.")[1].split(".")[0]) for n, p in peft_model.named_parameters()
         if "lora_B" in n and p.detach().abs().sum() > 0}
    )  # fmt: skip
    assert moved == plan.layers
    assert np.isfinite([p.detach().sum().item() for p in peft_model.parameters() if p.requires_grad]).all()
