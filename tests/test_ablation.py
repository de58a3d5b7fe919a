"""Ablation importance against an independent way of switching a layer's LoRA off (zeroing lora_B)."""

from __future__ import annotations

import pytest
import torch

from actlora_cli import train
from actlora_cli.ablation import run_ablation, switched_off
from actlora_cli.config import Config
from actlora_cli.data import encode, load_examples, task_spec
from actlora_cli.distributed import Dist
from actlora_cli.errors import ArtifactError
from actlora_cli.evaluation import evaluate_metrics, load_trained
from tests.conftest import NUM_LAYERS, tiny_config


@pytest.fixture(scope="module")
def trained_all(tmp_path_factory, tiny_models, tiny_task):
    cfg = Config.model_validate(
        tiny_config(
            tiny_models["bert"],
            tiny_task,
            tmp_path_factory.mktemp("abl") / "run",
            rank={"k": "all"},
            train={"epochs": 2, "lr": 2e-2},
        )
    )
    train.run_train(cfg)
    return cfg


def test_drops_match_zeroing_lora_b(trained_all):
    cfg = trained_all
    doc = run_ablation(cfg)
    assert set(doc["drop"]) == {"q", "v", "both"} and all(len(v) == NUM_LAYERS for v in doc["drop"].values())
    assert any(d != 0 for d in doc["drop"]["both"])  # the adapters matter, so the comparison below can fail
    assert max(doc["importance"]["both"]) == 1.0

    spec = task_spec(cfg.task)
    ctx = Dist(0, 1, 0, torch.device("cpu"))
    loaded, model = load_trained(cfg, 2, ctx)
    data = encode(loaded.tokenizer, load_examples(cfg.task, spec, "validation"), cfg.task.max_length, False)
    full = evaluate_metrics(model, data, spec, 16, ctx)["accuracy"]
    assert full == pytest.approx(doc["full_metric"])
    base = model.get_base_model()
    for layer in range(NUM_LAYERS):
        saved = {}
        for name in ("q", "v"):
            lora_b = base.get_submodule(loaded.arch.projections[name][layer]).lora_B["default"].weight
            saved[name] = lora_b.detach().clone()
            with torch.no_grad():
                lora_b.zero_()
        dropped = full - evaluate_metrics(model, data, spec, 16, ctx)["accuracy"]
        for name in ("q", "v"):
            with torch.no_grad():
                base.get_submodule(loaded.arch.projections[name][layer]).lora_B["default"].weight.copy_(
                    saved[name]
                )
        assert doc["drop"]["both"][layer] == pytest.approx(dropped, abs=1e-12)


def test_projection_mode_zeroes_the_whole_projection(trained_all):
    _, model = load_trained(trained_all, 2, Dist(0, 1, 0, torch.device("cpu")))
    path = "bert.encoder.layer.2.attention.self.value"
    layer = model.get_base_model().get_submodule(path)
    before = layer.get_base_layer().weight.detach().clone()
    x = torch.randn(3, 32)
    with switched_off(model, [path], "projection"):
        assert torch.equal(layer(x), torch.zeros(3, 32))
    assert torch.equal(layer.get_base_layer().weight, before)


def test_switch_is_restored(trained_all):
    _, model = load_trained(trained_all, 2, Dist(0, 1, 0, torch.device("cpu")))
    layer = model.get_base_model().get_submodule("bert.encoder.layer.1.attention.self.query")
    before = dict(layer.scaling)
    with switched_off(model, ["bert.encoder.layer.1.attention.self.query"]):
        assert all(v == 0.0 for v in layer.scaling.values())
    assert layer.scaling == before


def test_ablation_refuses_a_partial_plan(tmp_path, tiny_models, tiny_task):
    cfg = Config.model_validate(
        tiny_config(
            tiny_models["bert"], tiny_task, tmp_path / "run", rank={"layers": [2, 3]}, train={"max_steps": 2}
        )
    )
    train.run_train(cfg)
    with pytest.raises(ArtifactError, match="--k all"):
        run_ablation(cfg)
