"""Bad inputs end to end through the real CLI: a config file that is not UTF-8 or is empty, artefacts that
were edited or come from elsewhere, a damaged adapter, a task split without examples, a target the model
lacks. Each must be a clean error: exit code 2, the file or key named, a fix, no traceback, and the run folder
left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from tests.conftest import tiny_config

runner = CliRunner()
SIX = 6


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def probed(tmp_path_factory, six_layer_bert, tiny_task) -> Path:
    """A run folder with scores.json and selection.json (probe, then rank --k 2), nothing trained."""
    root = tmp_path_factory.mktemp("probed")
    cfg = _write_config(root / "cfg.yaml", tiny_config(six_layer_bert, tiny_task, root / "run"))
    for args in (("probe", "-c", cfg), ("rank", "-c", cfg, "--k", "2")):
        result, text = _invoke(*args)
        assert result.exit_code == 0, text
    return root / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, six_layer_bert, tiny_task) -> Path:
    """A run folder with a trained adapter (LoRA on every layer, two steps) and its checkpoints."""
    root = tmp_path_factory.mktemp("trained")
    cfg = _write_config(root / "cfg.yaml", tiny_config(six_layer_bert, tiny_task, root / "run"))
    result, text = _invoke("train", "-c", cfg, "--k", "all", "--max-steps", "2")
    assert result.exit_code == 0, text
    return root / "run"


def folder_state(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden ones included) -> a hash of its bytes, or 'dir'."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


@dataclass
class Env:
    """What a case works with: its own copy of a run folder and a tiny config pointing at it."""

    root: Path
    run: Path
    cfg: dict
    model: Path
    task: dict[str, str]

    def config(self, cfg: dict | None = None) -> str:
        return _write_config(self.root / "cfg.yaml", cfg or self.cfg)

    def edit(self, name: str, change: Callable[[dict], None]) -> Path:
        """Change the artefact ``name`` in the run folder through ``change(doc)``; returns its path."""
        path = self.run / name
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))
        return path


# name -> (the run folder it starts from: probed or trained, setup(env) -> (CLI arguments, texts the message
# must hold)); setup breaks something in the case's copy of the run folder, or writes a bad config or task
# file
Case = Callable[[Env], tuple[list[str], list[str]]]
CASES: dict[str, tuple[str, Case]] = {}


def case(base: str):
    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (base, fn)
        return fn

    return register


# --- 1. not UTF-8 -------------------------------------------------------------------------------------------


@case("probed")
def config_binary(env: Env):
    path = env.root / "bad.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    return ["probe", "-c", str(path)], [str(path), "UTF-8"]


@case("probed")
def config_latin1(env: Env):
    path = env.root / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(env.cfg).encode() + "# réglages du modèle\n".encode("latin-1"))
    return ["probe", "-c", str(path)], [str(path), "UTF-8"]


@case("probed")
def scores_binary(env: Env):
    (env.run / "scores.json").write_bytes(b"\xff\xfe\x00\x01binary\x80\x81")
    return ["rank", "-c", env.config(), "--k", "2"], [str(env.run / "scores.json"), "UTF-8"]


# --- 2. artefacts edited or from elsewhere ------------------------------------------------------------------


@case("probed")
def scores_without_scores(env: Env):
    path = env.edit("scores.json", lambda doc: doc.pop("scores"))
    return ["rank", "-c", env.config(), "--k", "2"], [str(path), "scores"]


@case("probed")
def scores_not_numbers(env: Env):
    path = env.edit("scores.json", lambda doc: doc.__setitem__("scores", ["high"] * SIX))
    return ["rank", "-c", env.config(), "--k", "2"], [str(path), "scores"]


def _twelve_layers(doc: dict, claim: int) -> None:
    doc["scores"] = [i / 11 for i in range(12)]
    doc["raw"] = [float(i) for i in range(12)]
    doc["model"]["num_layers"] = claim


@case("probed")
def scores_12_layers_for_6_layer_model(env: Env):
    """12 scores in a scores.json whose model record says 6 layers: rank would plan layers 9, 10, 11."""
    path = env.edit("scores.json", lambda doc: _twelve_layers(doc, SIX))
    return ["rank", "-c", env.config(), "--k", "3"], [str(path), "12"]


@case("probed")
def scores_of_12_layer_model_at_rank(env: Env):
    """A consistent 12-layer scores.json under this model's name: rank reads the model's config (no weights)
    and refuses it, rather than plan layers 9, 10, 11 of a 6-layer model."""
    path = env.edit("scores.json", lambda doc: _twelve_layers(doc, 12))
    return ["rank", "-c", env.config(), "--k", "3"], [str(path), "12 layer scores", f"has {SIX} layers"]


@case("probed")
def scores_of_12_layer_model_at_train(env: Env):
    """A consistent 12-layer scores.json under this model's name: only the loaded model can tell."""
    path = env.edit("scores.json", lambda doc: _twelve_layers(doc, 12))
    return ["train", "-c", env.config(), "--k", "3"], [str(path), "12", str(SIX)]


@case("probed")
def selection_without_layers(env: Env):
    path = env.edit("selection.json", lambda doc: doc.pop("layers"))
    return ["train", "-c", env.config()], [str(path), "layers"]


@case("probed")
def selection_layer_99(env: Env):
    path = env.edit("selection.json", lambda doc: doc.__setitem__("layers", [1, 99]))
    return ["train", "-c", env.config()], [str(path), "99"]


# --- 3. a damaged adapter -----------------------------------------------------------------------------------


@case("trained")
def adapter_weights_truncated(env: Env):
    path = env.run / "adapter" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["eval", "-c", env.config()], [str(path), "damaged", "checkpoints"]


@case("trained")
def adapter_config_garbage(env: Env):
    path = env.run / "adapter" / "adapter_config.json"
    path.write_text("{this is not json")
    return ["eval", "-c", env.config()], [str(path), "damaged"]


@case("trained")
def adapter_config_not_peft(env: Env):
    path = env.run / "adapter" / "adapter_config.json"
    path.write_text('{"hello": "world"}')
    return ["eval", "-c", env.config()], [str(path), "damaged"]


# --- 4. a split without examples ----------------------------------------------------------------------------


@case("probed")
def custom_train_split_header_only(env: Env):
    path = env.root / "train.csv"
    path.write_text("text,label\n")
    env.cfg["task"]["files"] = {**env.task, "train": str(path)}
    return ["probe", "-c", env.config()], [str(path), "train", "no examples"]


@case("trained")
def custom_eval_split_header_only(env: Env):
    path = env.root / "validation.csv"
    path.write_text("text,label\n")
    env.cfg["task"]["files"] = {**env.task, "validation": str(path)}
    return ["eval", "-c", env.config()], [str(path), "validation", "no examples"]


# --- 5. a target the model does not have --------------------------------------------------------------------


@case("probed")
def lora_target_unknown(env: Env):
    # the message names the key and what the model has (BERT's query/key/value, as q, k, v)
    return (
        ["train", "-c", env.config(), "--k", "all", "--set", "lora.targets=[qproj]"],
        ["lora.targets", "qproj", "attention.self.query"],
    )


@case("probed")
def ia3_target_unknown(env: Env):
    args = ["--set", "lora.method=ia3", "--set", "lora.ia3.targets=[value,nope]"]
    return ["train", "-c", env.config(), "--k", "all", *args], ["lora.ia3.targets", "'nope'", "output.dense"]


# --- 6. an empty config -------------------------------------------------------------------------------------


@case("probed")
def config_empty(env: Env):
    path = env.root / "empty.yaml"
    path.write_text("")
    return ["probe", "-c", str(path)], [str(path), "empty", "actlora config"]


@case("probed")
def config_only_comments(env: Env):
    path = env.root / "comments.yaml"
    path.write_text("# model:\n#   name: bert-base-uncased\n")
    return ["probe", "-c", str(path)], [str(path), "empty"]


# --- 7. task.data_dir and task.files that do not exist ------------------------------------------------------


@case("probed")
def data_dir_missing(env: Env):
    env.cfg["task"] = {"name": "movies", "data_dir": str(env.root / "no-such-folder")}
    return ["probe", "-c", env.config()], ["task.data_dir", "no-such-folder", "actlora data fetch"]


@case("probed")
def task_file_missing(env: Env):
    env.cfg["task"]["files"] = {**env.task, "train": str(env.root / "no-such.csv")}
    return ["probe", "-c", env.config()], ["task.files", "no-such.csv"]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clean_error(name, tmp_path, monkeypatch, request, six_layer_bert, tiny_task):
    base, setup = CASES[name]
    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(base), run, symlinks=True)
    monkeypatch.chdir(tmp_path)  # a config falling back to a default output_dir writes nothing into the repo
    env = Env(tmp_path, run, tiny_config(six_layer_bert, tiny_task, run), six_layer_bert, dict(tiny_task))
    args, named = setup(env)
    before = folder_state(run)

    result, text = _invoke(*args)

    assert result.exit_code == 2, text
    assert "Traceback" not in text, text
    for expected in named:
        assert expected in text, f"{expected!r} not in the message:\n{text}"
    assert "fix:" in text, text
    assert folder_state(run) == before, "the run folder changed"
