"""Shared fixtures: tiny random models of every supported family, saved as ordinary model folders (config,
safetensors, tokenizer) so the real loading code is what the tests exercise; a tiny custom task on disk.
Nothing here downloads."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# Before anything imports huggingface_hub (it reads these once, at import): tests never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

WORDS = (
    "good great fine superb lovely bad awful poor dull boring the a movie film plot actor scene was is very "
    "not quite rather story music ending script cast"
).split()
POSITIVE = {"good", "great", "fine", "superb", "lovely"}
FAMILIES = ("bert", "roberta", "deberta-v2", "llama", "mistral", "qwen2")
NUM_LAYERS = 4


def _tokenizer(decoder: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if decoder:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
            model_input_names=["input_ids", "attention_mask"],
        )
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
    )


def _config(family: str, vocab_size: int, hidden: int = 32):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=96, pad_token_id=0)
    if family == "bert":
        return tf.BertConfig(**common)
    if family == "roberta":
        return tf.RobertaConfig(**common)
    if family == "deberta-v2":
        return tf.DebertaV2Config(**common, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                  position_buckets=16, max_relative_positions=-1, pooler_hidden_size=32,
                                  type_vocab_size=0)
    decoder = dict(common, num_key_value_heads=2)
    return {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family](**decoder)


def make_tiny_model(
    root: Path, family: str, seed: int = 0, dropout: float | None = None, hidden: int = 32
) -> Path:
    """A random-weight sequence classifier of ``family`` with 4 layers, saved as a model folder.
    ``dropout=0`` turns the model's own dropout off (runs then depend on data order only); ``hidden`` must be
    a multiple of 64 for bitsandbytes' 4-bit CPU inference kernels."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = root / (family + ("" if dropout is None else f"-dropout{dropout}") + ("" if hidden == 32 else f"-h{hidden}"))
    if (folder / "config.json").exists():
        return folder
    decoder = family in ("llama", "mistral", "qwen2")
    tok = _tokenizer(decoder)
    if decoder:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    config = _config(family, len(tok), hidden)
    config.pad_token_id = tok.pad_token_id
    config.num_labels = 2
    if dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # Known limit: transformers 5 always builds Qwen2Tokenizer for model_type qwen2 (it distrusts hub tokenizer
    # classes there), which ignores this word-level vocabulary and maps most words to one token. The qwen2 tests
    # still compare against independent computations on the same inputs; they are just less varied.
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: make_tiny_model(root, family) for family in FAMILIES}


def write_task(folder: Path, n_train: int = 96, n_val: int = 48, seed: int = 0) -> dict[str, str]:
    """A tiny sentiment task as CSV files: label 1 iff the sentence has more positive than negative words."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        rows = ["text,label"]
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
            label = int(sum(w in POSITIVE for w in words) > sum(w in {"bad", "awful", "poor", "dull", "boring"} for w in words))
            rows.append(f"{' '.join(words)},{label}")
        path = folder / f"{split}.csv"
        path.write_text("\n".join(rows) + "\n")
        files[split] = str(path)
    return files


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> dict[str, str]:
    return write_task(tmp_path_factory.mktemp("tiny_task"))


def tiny_config(model_dir: Path, task_files: dict[str, str], run_dir: Path, **sections) -> dict:
    """A config dict for a tiny model on the tiny task; ``sections`` update sections key by key."""
    cfg = {
        "model": {"name": str(model_dir)},
        "task": {"name": "custom", "files": task_files, "text_fields": ["text"], "label_field": "label",
                 "num_labels": 2, "max_length": 32},
        "probe": {"steps": 3, "batch_size": 8},
        "train": {"batch_size": 8, "eval_batch_size": 16, "epochs": 1},
        "output_dir": str(run_dir),
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values) if isinstance(values, dict) else cfg.__setitem__(name, values)
    return cfg
