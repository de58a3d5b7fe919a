"""predict and export on a trained tiny run: predictions equal the trained model's own, a merged export
serves the same logits through plain transformers, and neither replaces an existing output unasked."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from actlora_cli.config import load_config
from actlora_cli.distributed import setup
from actlora_cli.evaluation import load_trained
from tests.conftest import tiny_config

runner = CliRunner()
TEXTS = ["a fine film", "dull and long", "the plot was a delight"]


def _invoke(*args):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models, tiny_task):
    root = tmp_path_factory.mktemp("serve")
    cfg = root / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, root / "run", rank={"k": "all"}))
    )
    result, text = _invoke("train", "-c", str(cfg))
    assert result.exit_code == 0, text
    return root, cfg


def _reference_logits(cfg_path, texts):
    cfg = load_config(cfg_path, None, {})
    loaded, model = load_trained(cfg, 2, setup())
    batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_predict_writes_labels_and_probabilities(trained):
    root, cfg = trained
    inputs = root / "in.jsonl"
    inputs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = root / "preds.jsonl"
    result, text = _invoke("predict", "-c", str(cfg), "--input", str(inputs), "--output", str(out))
    assert result.exit_code == 0, text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    logits = _reference_logits(cfg, TEXTS)
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["text"] for r in rows] == TEXTS
    assert [r["label_id"] for r in rows] == logits.argmax(dim=1).tolist()
    probs = torch.softmax(logits, dim=1)
    for row, p in zip(rows, probs, strict=True):
        assert row["probabilities"] == pytest.approx(p.tolist(), abs=1e-5)
    # an existing output stays as it was; --overwrite replaces it
    before = out.read_bytes()
    result, text = _invoke("predict", "-c", str(cfg), "--input", str(inputs), "--output", str(out))
    assert result.exit_code == 2 and "--overwrite" in text and out.read_bytes() == before
    # a bad line is named, nothing is written
    bad = root / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\nnot json\n')
    result, text = _invoke("predict", "-c", str(cfg), "--input", str(bad), "--output", str(root / "x.jsonl"))
    assert result.exit_code == 2 and "bad.jsonl:2" in text and "bad.jsonl:3" in text
    assert not (root / "x.jsonl").exists()


def test_export_merged_serves_the_same_logits(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, cfg = trained
    dest = root / "merged"
    result, text = _invoke("export", "-c", str(cfg), "--merge", str(dest))
    assert result.exit_code == 0, text
    model = AutoModelForSequenceClassification.from_pretrained(dest).eval()
    tok = AutoTokenizer.from_pretrained(dest)
    with torch.no_grad():
        logits = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits, _reference_logits(cfg, TEXTS), rtol=1e-4, atol=1e-5)
    assert not any("lora" in n for n, _ in model.named_parameters())
    # again: refused without --overwrite; a folder that is not a model is never deleted, even with it
    assert _invoke("export", "-c", str(cfg), "--merge", str(dest))[0].exit_code == 2
    keep = root / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    result, text = _invoke("export", "-c", str(cfg), "--merge", str(keep), "--overwrite")
    assert result.exit_code == 2 and (keep / "notes.txt").read_text() == "mine"
    assert _invoke("export", "-c", str(cfg), "--merge", str(dest), "--overwrite")[0].exit_code == 0


def test_export_refuses_a_4bit_base(trained):
    root, cfg = trained
    result, text = _invoke(
        "export", "-c", str(cfg), "--set", "model.quantization=nf4", "--merge", str(root / "q")
    )
    assert result.exit_code == 2 and "re-quantises" in text and not (root / "q").exists()
