"""Shared fixtures: tiny random models of every supported family, saved as ordinary model folders (config,
safetensors, tokenizer) so the real loading code is what the tests exercise; a tiny custom task on disk.
And the helpers several test modules use: a config for them, a NaN loss mid-run, gradient-reach hooks.
Nothing here downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub (it reads these once, at import): tests never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from actlora_cli.synthetic import WORDS, save_model, tokenizer, write_task  # noqa: F401 (WORDS: used by tests)

FAMILIES = ("bert", "roberta", "deberta-v2", "llama", "mistral", "qwen2")
NUM_LAYERS = 4


def _config(family: str, vocab_size: int, hidden: int = 32, layers: int = NUM_LAYERS):
    import transformers as tf

    common = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 96,
        "pad_token_id": 0,
    }
    if family == "bert":
        return tf.BertConfig(**common)
    if family == "roberta":
        return tf.RobertaConfig(**common)
    if family == "deberta-v2":
        return tf.DebertaV2Config(
            **common,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=-1,
            pooler_hidden_size=32,
            type_vocab_size=0,
        )
    decoder = dict(common, num_key_value_heads=2)
    return {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family](**decoder)


def make_tiny_model(
    root: Path,
    family: str,
    seed: int = 0,
    dropout: float | None = None,
    hidden: int = 32,
    layers: int = NUM_LAYERS,
) -> Path:
    """A random-weight sequence classifier of ``family`` with ``layers`` layers (4), saved as a model folder.
    ``dropout=0`` turns the model's own dropout off (runs then depend on data order only); ``hidden`` must be
    a multiple of 64 for bitsandbytes' 4-bit CPU inference kernels."""
    folder = root / (
        family
        + ("" if dropout is None else f"-dropout{dropout}")
        + ("" if hidden == 32 else f"-h{hidden}")
        + ("" if layers == NUM_LAYERS else f"-L{layers}")
    )
    config = _config(family, len(tokenizer(False)), hidden, layers)
    if dropout is not None:
        for key in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "classifier_dropout",
            "attention_dropout",
        ):
            if hasattr(config, key):
                setattr(config, key, dropout)
    save_model(folder, config, decoder=family in ("llama", "mistral", "qwen2"), seed=seed)
    # Known limit: transformers 5 always builds Qwen2Tokenizer for model_type qwen2 (it distrusts hub
    # tokenizer classes there), which ignores this word-level vocabulary and maps most words to one token.
    # The qwen2 tests still compare against independent computations on the same inputs; they are just less
    # varied.
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: make_tiny_model(root, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def six_layer_bert(tmp_path_factory) -> Path:
    """A tiny BERT with 6 layers: room for a top-heavy plan (3, 4, 5) above a frozen prefix, and a model that
    a 12-layer scores.json cannot belong to."""
    return make_tiny_model(tmp_path_factory.mktemp("six"), "bert", layers=6)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> dict[str, str]:
    return write_task(tmp_path_factory.mktemp("tiny_task"), n_train=96, n_val=48)


def tiny_config(model_dir: Path, task_files: dict[str, str], run_dir: Path, **sections) -> dict:
    """A config dict for a tiny model on the tiny task; ``sections`` update sections key by key."""
    cfg = {
        "model": {"name": str(model_dir)},
        "task": {
            "name": "custom",
            "files": task_files,
            "text_fields": ["text"],
            "label_field": "label",
            "num_labels": 2,
            "max_length": 32,
        },
        "probe": {"steps": 3, "batch_size": 8},
        # the tests were written against these (the defaults before the fast path): a test of the defaults
        # sets them itself
        "train": {
            "batch_size": 8,
            "eval_batch_size": 16,
            "epochs": 1,
            "group_by_length": False,
            "prefix_cache": "off",
        },
        "output_dir": str(run_dir),
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values) if isinstance(values, dict) else cfg.__setitem__(name, values)
    return cfg


def poison_loss(monkeypatch, at_call: int):
    """Make the training loop's loss NaN at the ``at_call``-th loss computation (a NaN stop mid-run, after
    the last checkpoint); returns the real compute_loss, to put back before resuming."""
    from actlora_cli import train

    real, calls = train.compute_loss, {"n": 0}

    def poisoned(logits, labels, regression, reduction="mean"):
        calls["n"] += 1
        loss = real(logits, labels, regression, reduction)
        return loss * float("nan") if calls["n"] == at_call else loss

    monkeypatch.setattr(train, "compute_loss", poisoned)
    return real


def grad_reach(model, arch) -> tuple[list[int], list[bool], list]:
    """Hooks that record, per layer, how many gradients reached its output and whether its input required
    grad; returns (calls, input_needs_grad, handles): the lists fill in as the model runs forward and
    backward, and the caller removes the handles."""
    calls = [0] * arch.num_layers
    input_needs_grad = [False] * arch.num_layers
    handles = []
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # arch paths are HF paths
    for i in range(arch.num_layers):
        layer = inner.get_submodule(arch.layer_path(i))

        def pre(_m, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            input_needs_grad[i] = hidden.requires_grad

        def post(_m, _a, out, i=i):
            out = out[0] if isinstance(out, tuple) else out
            if out.requires_grad:
                out.register_hook(lambda g, i=i: calls.__setitem__(i, calls[i] + 1))

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post))
    return calls, input_needs_grad, handles
