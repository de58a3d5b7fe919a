"""Typed JSON artefacts: round trip, atomic writes, and checked reads that say how to fix a mismatch."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from actlora_cli import artifacts
from actlora_cli.artifacts import (
    KINDS,
    SCHEMA_VERSION,
    atomic_write_text,
    file_hash,
    read_artifact,
    write_artifact,
)
from actlora_cli.errors import ArtifactError

PAYLOAD = {
    "model": {"name": "packaged:all-MiniLM-L6-v2", "type": "bert", "num_layers": 6},
    "scores": [0.0, 1.0, 0.25, 0.5, 0.75, 0.125],
    "flat": False,
}


def _only_problem(info) -> tuple[str, str, str]:
    (problem,) = info.value.problems
    return problem.where, problem.what, problem.fix


def test_write_then_read_round_trip(tmp_path):
    path = tmp_path / "run" / "scores.json"  # the run folder is created
    doc = write_artifact(path, "scores", PAYLOAD)
    assert doc == {"kind": "scores", "schema_version": SCHEMA_VERSION, **PAYLOAD}
    on_disk = json.loads(path.read_text())
    assert on_disk == doc
    assert list(on_disk)[:2] == ["kind", "schema_version"]
    assert path.read_text().endswith("}\n")
    assert read_artifact(path, "scores") == doc
    assert read_artifact(path, "scores", model_name="packaged:all-MiniLM-L6-v2") == doc


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "selection.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selection.json"]


def test_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "scores.json"
    old = write_artifact(path, "scores", PAYLOAD)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(path, "scores", {**PAYLOAD, "scores": [1.0] * 6})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_artifact(path, "scores") == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    atomic_write_text(path, "old\n")

    def broken_fsync(fd):
        raise OSError("io error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="io error"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_unserialisable_payload_keeps_the_old_file(tmp_path):
    path = tmp_path / "scores.json"
    write_artifact(path, "scores", PAYLOAD)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_artifact(path, "scores", {"model": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


@pytest.mark.parametrize(("kind", "command"), [(kind, command) for kind, (_, command) in KINDS.items()])
def test_missing_file_names_the_producing_command(tmp_path, kind, command):
    path = tmp_path / f"{kind}.json"
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, kind)
    where, what, fix = _only_problem(info)
    assert where == str(path)
    assert what == f"no {kind} file"
    assert fix == f"run `{command}` with this config first"


def test_kinds_table():
    assert KINDS["scores"] == ("scores.json", "actlora probe")
    assert KINDS["selection"] == ("selection.json", "actlora rank")
    assert KINDS["train_summary"] == ("train_summary.json", "actlora train")
    assert KINDS["eval"] == ("eval.json", "actlora eval")


def test_bad_json(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text('{"kind": "scores", ')
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, "scores")
    where, what, fix = _only_problem(info)
    assert where == str(path)
    assert what.startswith("not valid JSON (")
    assert fix == "re-run `actlora probe`"


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ({"kind": "selection", "schema_version": SCHEMA_VERSION}, "selection"),
        ({"schema_version": SCHEMA_VERSION}, "None"),
        ([1, 2, 3], "list"),
    ],
)
def test_wrong_kind(tmp_path, content, found):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, "scores")
    _, what, fix = _only_problem(info)
    assert what == f"expected a 'scores' artefact, found '{found}'"
    assert fix == "run `actlora probe`"


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, None])
def test_wrong_schema_version(tmp_path, version):
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"kind": "selection", "schema_version": version, "layers": [1]}))
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, "selection")
    _, what, fix = _only_problem(info)
    assert what == f"schema version {version} but this actlora reads version {SCHEMA_VERSION}"
    assert fix == "re-run `actlora rank` with this version of actlora"


def test_model_mismatch_names_both_models_and_the_fixes(tmp_path):
    path = tmp_path / "scores.json"
    write_artifact(path, "scores", {**PAYLOAD, "model": {"name": "microsoft/deberta-v3-base"}})
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, "scores", model_name="packaged:all-MiniLM-L6-v2")
    where, what, fix = _only_problem(info)
    assert where == str(path)
    assert "'microsoft/deberta-v3-base'" in what
    assert "'packaged:all-MiniLM-L6-v2'" in what
    assert "re-run `actlora probe` for this model" in fix
    assert "model.name=microsoft/deberta-v3-base" in fix
    assert "output_dir" in fix


def test_model_check_without_model_in_artifact(tmp_path):
    path = tmp_path / "eval.json"
    write_artifact(path, "eval", {"accuracy": 0.9})
    assert read_artifact(path, "eval")["accuracy"] == 0.9
    with pytest.raises(ArtifactError, match="made for model 'None'"):
        read_artifact(path, "eval", model_name="m")


def test_file_hash(tmp_path):
    path = tmp_path / "scores.json"
    path.write_bytes(b"abc")
    assert file_hash(path) == hashlib.sha256(b"abc").hexdigest()[:16] == "ba7816bf8f01cfea"
    path.write_bytes(b"abd")
    assert file_hash(path) != "ba7816bf8f01cfea"


def test_provenance_fields():
    prov = artifacts.provenance("0123456789abcdef")
    assert prov["config_hash"] == "0123456789abcdef"
    assert set(prov) == {"created_at", "host", "config_hash", "versions"}
    assert set(prov["versions"]) == {"actlora", "python", "torch", "transformers", "peft"}
    assert all(isinstance(v, str) and v for v in prov["versions"].values())
