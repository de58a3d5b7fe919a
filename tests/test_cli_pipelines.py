"""The command line in pipelines: --json (one document on stdout, the artefact written), --quiet, --version,
shell completion, help without value placeholders on flags, and the configs that ship with the package."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from actlora_cli import render, ui
from actlora_cli.cli import app
from actlora_cli.config import (
    load_config,
    packaged_config,
    packaged_config_names,
    packaged_configs_root,
    resolve_config_path,
)
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _run(*args: str):
    """(result, stdout, stderr): the two streams apart, as a pipe sees them."""
    result = runner.invoke(app, list(args))
    return result, result.stdout, result.stderr


def _json(*args: str) -> dict:
    result, out, err = _run(*args)
    assert result.exit_code == 0, out + err
    return json.loads(out)  # the whole of stdout is one document


def _file(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def bert_cfg(tmp_path, tiny_models, tiny_task) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run")))
    return str(path)


def test_json_is_the_artefact_each_stage_wrote(tmp_path, bert_cfg):
    run = tmp_path / "run"
    assert _json("probe", "-c", bert_cfg, "--json") == _file(run / "scores.json")
    # before the command too, and a run's layers piped on as `jq .layers` would
    selection = _json("--json", "rank", "-c", bert_cfg, "--k", "2")
    assert selection == _file(run / "selection.json") and len(selection["layers"]) == 2
    assert _json("config", "-c", bert_cfg, "--json") == load_config(bert_cfg).to_dict()

    base = str(tmp_path / "base")
    train = ("train", "-c", bert_cfg, "--max-steps", "1", "--json")
    assert _json(*train, "-o", base, "--k", "all") == _file(tmp_path / "base" / "train_summary.json")
    assert _json(*train) == _file(run / "train_summary.json")
    assert _json("eval", "-c", bert_cfg, "--json") == _file(run / "eval.json")
    assert _json("eval", "-c", bert_cfg, "-o", base, "--json") == _file(tmp_path / "base" / "eval.json")
    assert _json("ablate", "-c", bert_cfg, "-o", base, "--json") == _file(tmp_path / "base" / "ablation.json")

    out = tmp_path / "cmp.json"
    report = _json("compare", str(run), "--baseline", base, "--out", str(out), "--json")
    assert report == _file(out) and report["kind"] == "comparison"

    study = tmp_path / "study"
    assert _json("study", "thresholds", "--out", str(study), "-c", bert_cfg, "--json") == _file(
        study / "thresholds.json"
    )


def test_json_of_a_sweep_and_its_dry_run(tmp_path, bert_cfg):
    out = tmp_path / "sweep"
    grid = ("sweep", "-c", bert_cfg, "--out", str(out), "--k", "all", "--set", "train.max_steps=1")
    plan = _json(*grid, "--dry-run", "--json")
    assert plan["total"] == 1 and not out.exists()
    assert _json(*grid, "--json") == _file(out / "sweep.json")


def test_quiet_shows_nothing_but_keeps_the_exit_code(tmp_path, bert_cfg):
    result, out, err = _run("probe", "-c", bert_cfg, "-q")
    assert result.exit_code == 0 and out == "" and err == ""
    assert (tmp_path / "run" / "scores.json").is_file()
    result, out, err = _run("--quiet", "rank", "-c", bert_cfg, "--k", "2")
    assert result.exit_code == 0 and out == "" and err == ""
    # an error still says what is wrong, on stderr, with its code
    result, out, err = _run("rank", "-c", bert_cfg, "--k", "three", "--quiet")
    assert result.exit_code == 2 and out == "" and "--k" in err


def test_json_errors_keep_their_code_and_stderr(tmp_path, bert_cfg):
    result, out, err = _run("rank", "-c", bert_cfg, "--k", "2", "--json")  # no scores.json yet
    assert result.exit_code == 2 and out == "" and "actlora probe" in err
    result, out, err = _run("config", "-c", str(tmp_path / "missing.yaml"), "--json")
    assert result.exit_code == 2 and out == "" and "config file not found" in err


def test_quiet_keeps_warnings(monkeypatch):
    shown, said = io.StringIO(), io.StringIO()
    monkeypatch.setattr(ui, "out", Console(file=shown, width=200))
    monkeypatch.setattr(ui, "err", Console(file=said, width=200))
    with ui.output_mode(quiet=True):
        ui.note("a note")
        ui.warn("a warning")
        with ui.progress("bar", 2) as advance:
            advance()
        render.data_manifest({"counts": {"movies": {"train": 1, "validation": 1}}}, Path("d"))
    assert shown.getvalue() == "" and said.getvalue() == "warning: a warning\n"
    ui.note("a note")  # the mode ends with its block
    assert "a note" in said.getvalue()


def test_json_on_other_ranks_writes_nothing(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    with ui.output_mode(as_json=True):
        render.ablation({"metric": "accuracy"})
    assert capsys.readouterr().out == ""


def test_a_command_that_writes_no_json_document_fails_loudly(monkeypatch):
    monkeypatch.setattr(render, "resolved_config", lambda cfg: None)  # a renderer that ignores --json
    result, out, _ = _run("config", "--json")
    assert result.exit_code == 1 and out == ""
    assert "wrote 0 JSON documents" in str(result.exception)


def test_version():
    from importlib.metadata import version

    result, out, _ = _run("--version")
    assert result.exit_code == 0 and out == f"actlora {version('actlora')}\n"


def _commands(command, path=()):
    """(path, click command) of every command, groups and leaves."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_shows_no_value_for_flags_and_every_command_has_json_and_quiet():
    for path, command in _commands(get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        assert "<bool>" not in result.stdout, path
        if path == () or not hasattr(command, "commands"):  # the app and every command; not data, study
            assert "--json" in result.stdout and "--quiet" in result.stdout, path


def test_shell_completion_completes_commands_and_options():
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "_ACTLORA_COMPLETE": "complete_bash",
        "COMP_WORDS": "actlora rank --js",
        "COMP_CWORD": "2",
    }
    done = subprocess.run([sys.executable, "-m", "actlora_cli"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["--json"]
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout


# --- the configs that ship with the package ----------------------------------------------------------------


def test_configs_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the clone: the names come from the package
    rows = _json("configs", "list", "--json")
    assert [r["name"] for r in rows] == packaged_config_names()
    assert len(rows) == len(list((ROOT / "configs").glob("**/*.yaml")))
    by_name = {r["name"]: r for r in rows}
    assert by_name["deberta_v3_base/deberta_sst2.yaml"] == {
        "name": "deberta_v3_base/deberta_sst2.yaml",
        "model": "microsoft/deberta-v3-base",
        "task": "sst2",
        "method": "lora",
        "rule": "k=6",
    }
    result, out, _ = _run("configs", "list")
    assert result.exit_code == 0 and "minilm_movies.yaml" in out and "k/tau" in out


def test_configs_copy_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = (ROOT / "configs" / "deberta_v3_base" / "deberta_sst2.yaml").read_text()
    result, out, err = _run("configs", "copy", "deberta_sst2", "mine.yaml")
    assert result.exit_code == 0, out + err
    assert (tmp_path / "mine.yaml").read_text() == shipped  # comments and all
    (tmp_path / "mine.yaml").write_text("rank:\n  k: 2\n")
    result, out, err = _run("configs", "copy", "deberta_v3_base/deberta_sst2.yaml", "mine.yaml")
    assert result.exit_code == 2 and "exists already" in err and "--force" in err
    assert (tmp_path / "mine.yaml").read_text() == "rank:\n  k: 2\n"
    assert _run("configs", "copy", "deberta_sst2", "mine.yaml", "--force")[0].exit_code == 0
    assert (tmp_path / "mine.yaml").read_text() == shipped
    (tmp_path / "into").mkdir()
    doc = _json("configs", "copy", "minilm_movies", "into", "--json")
    assert doc["name"] == "minilm_movies.yaml" and Path(doc["path"]) == Path("into/minilm_movies.yaml")
    assert (tmp_path / "into" / "minilm_movies.yaml").is_file()
    result, out, err = _run("configs", "copy", "no_such_config", "x.yaml")
    assert result.exit_code == 2 and "configs list" in err and not (tmp_path / "x.yaml").exists()


def test_config_names_resolve_to_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    root = packaged_configs_root()
    sst2 = root / "deberta_v3_base" / "deberta_sst2.yaml"
    for name in (
        "deberta_v3_base/deberta_sst2.yaml",
        "deberta_v3_base/deberta_sst2",
        "deberta_sst2",
        "deberta_sst2.yaml",
        "configs/deberta_v3_base/deberta_sst2.yaml",
    ):
        assert resolve_config_path(name) == sst2, name
    assert resolve_config_path("configs/minilm_movies.yaml") == root / "minilm_movies.yaml"
    assert packaged_config("deberta_v3_base") is None  # a folder is not a config
    assert packaged_config("nope") is None and resolve_config_path("nope.yaml") == Path("nope.yaml")
    config = _json("config", "-c", "deberta_v3_base/deberta_sst2", "--json")
    assert config["model"]["name"] == "microsoft/deberta-v3-base" and config["task"]["name"] == "sst2"
    # a real path always wins
    (tmp_path / "deberta_v3_base").mkdir()
    (tmp_path / "deberta_v3_base" / "deberta_sst2.yaml").write_text("rank:\n  k: 2\n")
    assert resolve_config_path("deberta_v3_base/deberta_sst2.yaml") == Path(
        "deberta_v3_base/deberta_sst2.yaml"
    )
    assert _json("config", "-c", "deberta_v3_base/deberta_sst2.yaml", "--json")["rank"]["k"] == 2


def test_the_wheel_carries_the_configs_and_every_module(tmp_path):
    """Build the wheel (offline, with the setuptools installed here) and read what it holds; then use it as
    an installed package, away from the clone."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("actlora_cli", "configs"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    built = subprocess.run([*command, str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr[-500:]}")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"actlora_cli/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
        for p in ROOT.glob("configs/**/*.yaml")
    }
    modules = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("actlora_cli/**/*.py")}
    assert configs and configs <= names and modules <= names, sorted((configs | modules) - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from actlora_cli.config import packaged_config, packaged_configs_root as root\n"
        "print(root()); print(packaged_config('deberta_sst2'))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(site / "actlora_cli" / "configs"),
        str(site / "actlora_cli" / "configs" / "deberta_v3_base" / "deberta_sst2.yaml"),
    ]
