"""A DeBERTa-v2/v3 tokenizer shipped as spm.model alone (no tokenizer.json), as the hub's DeBERTa-v3 folders
are: transformers converts it to a fast tokenizer, which needs sentencepiece and protobuf (both are
dependencies for this). Built here from a tiny sentencepiece model trained on the spot."""

from __future__ import annotations

import json

import pytest

from actlora_cli.config import ModelSection
from actlora_cli.modeling import load_tokenizer


@pytest.fixture
def spm_folder(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    words = "the film was a delight and the plot was dull but the acting was fine".split()
    corpus.write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))) * 20)
    folder = tmp_path / "deberta-spm"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=30, model_type="unigram",
        pad_id=0, unk_id=3, bos_id=1, eos_id=2, user_defined_symbols=["[MASK]"],
        character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    (folder / "spm.vocab").unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2", "vocab_size": 30}))
    special = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]"}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, **special})
    )
    return folder


def test_spm_only_deberta_tokenizer_loads_and_tokenizes(spm_folder):
    assert not (spm_folder / "tokenizer.json").exists()
    tok = load_tokenizer(ModelSection(name=str(spm_folder)))
    assert tok.is_fast  # converted from spm.model: the path that needs protobuf
    ids = tok("the acting was fine")["input_ids"]
    assert len(ids) >= 4 and tok.pad_token is not None and tok.padding_side == "right"
    assert "acting" in tok.decode(ids).replace(" ", "") or "act" in tok.decode(ids)
