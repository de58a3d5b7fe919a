"""A finished adapter folder is self-contained: in a fresh process, plain transformers + peft load it (the
label count from its actlora.json) to the logits actlora's own reload gives, for binary, 3-class and
regression tasks; the folder holds the tokenizer, a model card and a portable base reference."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from actlora_cli.config import load_config
from actlora_cli.distributed import setup
from actlora_cli.evaluation import load_trained
from actlora_cli.model_card import portable_base
from tests.conftest import tiny_config

TEXTS = ["good fine film", "dull bad long", "a story"]

LOAD = """
import json, sys, torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer
folder = sys.argv[1]
meta = json.load(open(folder + "/actlora.json"))
extra = {"problem_type": meta["problem_type"]} if meta["num_labels"] == 1 else {}
model = AutoPeftModelForSequenceClassification.from_pretrained(
    folder, num_labels=meta["num_labels"], ignore_mismatched_sizes=True, **extra
)
tok = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model.eval()(**tok(json.loads(sys.argv[2]), padding=True, return_tensors="pt")).logits
print(json.dumps(logits.tolist()))
"""


def _relabel(task: dict[str, str], root, num_labels: int) -> dict[str, str]:
    """The tiny task with 3 classes (word count mod 3) or a rating (words / 10) as labels."""
    files = {}
    for split, path in task.items():
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        out = root / f"{split}.csv"
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for r in rows:
                n = len(r["text"].split())
                writer.writerow([r["text"], n % 3 if num_labels == 3 else n / 10])
        files[split] = str(out)
    return files


@pytest.mark.parametrize("num_labels", [2, 3, 1])
def test_adapter_folder_loads_alone_with_the_same_logits(tmp_path, tiny_models, tiny_task, num_labels):
    files = tiny_task if num_labels == 2 else _relabel(tiny_task, tmp_path, num_labels)
    cfg_dict = tiny_config(tiny_models["bert"], files, tmp_path / "run", rank={"layers": [1, 3]})
    cfg_dict["task"]["num_labels"] = num_labels
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict))
    result = CliRunner().invoke(app, ["train", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "adapter"
    meta = json.loads((folder / "actlora.json").read_text())
    assert meta["num_labels"] == num_labels and meta["plan"]["layers"] == [1, 3]
    assert meta["problem_type"] == ("regression" if num_labels == 1 else "single_label_classification")
    assert (folder / "tokenizer_config.json").is_file()
    card = (folder / "README.md").read_text()
    assert "layers [1, 3]" in card and f"num_labels={num_labels}" in card and "More Information" not in card

    cfg = load_config(cfg_path, None, {})
    loaded, model = load_trained(cfg, num_labels, setup())
    with torch.no_grad():
        expected = model(**loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    # a fresh process, nothing of actlora imported: plain peft + transformers
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_packaged_base_is_referenced_by_its_hub_id():
    assert portable_base("packaged:all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_base("/models/x") == "/models/x"


NAMES = ("zebra", "apple", "mango")  # class 0, 1, 2 of _relabel; sorted: apple 0, mango 1, zebra 2
SORTED = sorted(NAMES)


def _rewrite(files: dict[str, str], folder, label) -> dict[str, str]:
    """The task's files with each class id replaced by ``label(id)``."""
    folder.mkdir()
    out = {}
    for split, path in files.items():
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        out[split] = str(folder / f"{split}.csv")
        with open(out[split], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([r["text"], label(int(r["label"]))] for r in rows)
    return out


LOAD_NAMED = """
import json, sys, torch
from peft import AutoPeftModelForSequenceClassification
folder = sys.argv[1]
meta = json.load(open(folder + "/actlora.json"))
model = AutoPeftModelForSequenceClassification.from_pretrained(
    folder, num_labels=meta["num_labels"], id2label=meta["id2label"], label2id=meta["label2id"],
    ignore_mismatched_sizes=True,
)
print(json.dumps({"id2label": model.config.id2label, "label2id": model.config.label2id}))
"""


def test_string_labels_train_eval_predict_by_name(tmp_path, tiny_models, tiny_task):
    """A custom task whose labels are names trains exactly as the same task with the names' sorted positions
    as ids; the map is in train_summary, eval.json and the adapter's actlora.json; predict answers with names;
    plain peft + transformers load the adapter with the names on model.config."""
    ids = _relabel(tiny_task, tmp_path, 3)
    named = _rewrite(ids, tmp_path / "named", lambda i: NAMES[i])
    by_position = _rewrite(ids, tmp_path / "by_position", lambda i: SORTED.index(NAMES[i]))
    runs = {}
    for name, files in (("named", named), ("by_position", by_position)):
        cfg_dict = tiny_config(tiny_models["bert"], files, tmp_path / f"run_{name}", rank={"layers": [1, 3]})
        cfg_dict["task"]["num_labels"] = 3
        runs[name] = tmp_path / f"{name}.yaml"
        runs[name].write_text(yaml.safe_dump(cfg_dict))
        for command in ("train", "eval"):
            result = CliRunner().invoke(app, [command, "-c", str(runs[name])])
            assert result.exit_code == 0, result.output
    expected_map = {str(i): n for i, n in enumerate(SORTED)}
    docs = {
        name: [
            json.loads((tmp_path / f"run_{name}" / f).read_text())
            for f in ("train_summary.json", "eval.json")
        ]
        for name in runs
    }
    for doc in docs["named"]:
        assert doc["task"]["id2label"] == expected_map
    assert [d["task"]["id2label"] for d in docs["by_position"]] == [None, None]
    # the same ids, so the same training: metrics equal to the last digit
    assert docs["named"][0]["final_metrics"] == docs["by_position"][0]["final_metrics"]
    assert docs["named"][1]["metrics"] == docs["by_position"][1]["metrics"]

    folder = tmp_path / "run_named" / "adapter"
    meta = json.loads((folder / "actlora.json").read_text())
    assert meta["id2label"] == expected_map and meta["label2id"] == {n: i for i, n in enumerate(SORTED)}
    assert "id2label={0: 'apple', 1: 'mango', 2: 'zebra'}" in (folder / "README.md").read_text()
    out = subprocess.run(
        [sys.executable, "-c", LOAD_NAMED, str(folder)], capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"id2label": expected_map, "label2id": {n: i for i, n in enumerate(SORTED)}}

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    preds = {}
    for name in runs:
        out_path = tmp_path / f"preds_{name}.jsonl"
        result = CliRunner().invoke(
            app, ["predict", "-c", str(runs[name]), "--input", str(inputs), "--output", str(out_path)]
        )
        assert result.exit_code == 0, result.output
        preds[name] = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["label_id"] for r in preds["named"]] == [r["label_id"] for r in preds["by_position"]]
    assert [r["prediction"] for r in preds["named"]] == [SORTED[r["label_id"]] for r in preds["named"]]
    assert [r["prediction"] for r in preds["by_position"]] == [r["label_id"] for r in preds["by_position"]]

    # a training file whose names changed since: the adapter's outputs would be renamed, so eval refuses
    renamed = _rewrite(ids, tmp_path / "renamed", lambda i: ("yak", "apple", "mango")[i])
    result = CliRunner().invoke(
        app, ["eval", "-c", str(runs["named"]), "--set", f"task.files.train={renamed['train']}",
              "--set", f"task.files.validation={renamed['validation']}"],
    )  # fmt: skip
    assert result.exit_code == 2 and "was trained with the labels" in result.output
