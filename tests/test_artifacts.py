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
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


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
    path = tmp_path / "doc.json"  # the reader's own test: a plan is never written by hand to steer a run
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
    write_artifact(path, "eval", {"metrics": {"validation": {"accuracy": 0.9}}})
    with pytest.raises(ArtifactError, match="made for model 'None'"):
        read_artifact(path, "eval", model_name="m")
    with pytest.raises(ArtifactError, match="'model' is missing"):
        read_artifact(path, "eval")


# --- the schema every reader gets --------------------------------------------------------------------------

GOOD = {
    "scores": PAYLOAD,
    "selection": {
        "model": {"name": "m"}, "layers": [1, 3], "k": 2, "tau": None, "rule": "top_k", "ranking": [3, 1, 0],
        "cumulative_importance": [0.5, 1.0, 1.0], "coverage": 1.0, "scores": [0.2, 0.8, 0.0],
    },
    "train_summary": {"model": {"name": "m", "num_layers": 6}, "plan": {"layers": [4, 5]}, "method": "lora"},
    "eval": {"model": {"name": "m"}, "metrics": {"validation": {"accuracy": 0.5, "f1": 1}}},
    "costs": {
        "model": {"name": "m", "num_layers": 2}, "step_seconds": {"lowest": [0.3, 0.2], "all": 0.4},
        "prefix_forward_seconds": [0.01, 0.1],
    },
}  # fmt: skip


def test_schema_covers_the_kinds_readers_check():
    assert set(artifacts.SCHEMAS) == set(GOOD) == {"scores", "selection", "train_summary", "eval", "costs"}


@pytest.mark.parametrize("kind", list(GOOD))
def test_well_formed_artifacts_pass(tmp_path, kind):
    path = tmp_path / f"{kind}.json"
    write_artifact(path, kind, GOOD[kind])
    assert read_artifact(path, kind)["model"] == GOOD[kind]["model"]


def _without(doc: dict, key: str) -> dict:
    return {k: v for k, v in doc.items() if k != key}


@pytest.mark.parametrize(
    ("kind", "doc", "what"),
    [
        ("scores", _without(PAYLOAD, "scores"), "'scores' is missing"),
        ("scores", {**PAYLOAD, "scores": ["high"] * 6}, "'scores' must be a list of numbers, found"),
        ("scores", {**PAYLOAD, "scores": [True] * 6}, "'scores' must be a list of numbers, found"),
        ("scores", {**PAYLOAD, "model": {"name": "m"}}, "'model.num_layers' is missing"),
        ("scores", {**PAYLOAD, "model": "m"}, "'model' must be a mapping, found \"m\""),
        ("scores", {**PAYLOAD, "scores": [0.5] * 12}, "12 layer scores, but its model record says the model"),
        ("selection", _without(GOOD["selection"], "layers"), "'layers' is missing"),
        ("selection", {**GOOD["selection"], "layers": "1,3"}, "'layers' must be a list of whole numbers"),
        ("selection", {**GOOD["selection"], "layers": [1.0, 3]}, "'layers' must be a list of whole numbers"),
        ("selection", {**GOOD["selection"], "tau": "0.5"}, "'tau' must be a number or null"),
        ("train_summary", _without(GOOD["train_summary"], "plan"), "'plan' is missing"),
        (
            "train_summary",
            {**GOOD["train_summary"], "plan": {"layers": None}},
            "'plan.layers' must be a list",
        ),
        (
            "eval",
            {**GOOD["eval"], "metrics": {"validation": 0.5}},
            "'metrics' must be a mapping to a mapping",
        ),
    ],
)
def test_schema_problems_name_the_file_and_key(tmp_path, kind, doc, what):
    path = tmp_path / f"{kind}-doc.json"  # malformed on purpose: only the reader sees it
    write_artifact(path, kind, doc)
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, kind)
    where, message, fix = _only_problem(info)
    assert where == str(path) and message.startswith(what), message
    assert fix.startswith(f"re-run `{KINDS[kind][1]}`")


def test_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "scores.json"
    path.write_bytes(b'{"kind": "scores", "note": "\xe9"}')
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, "scores")
    where, what, fix = _only_problem(info)
    assert where == str(path) and what.startswith("not UTF-8 text (byte 0xe9 at offset 28)")
    assert fix == "re-run `actlora probe`"


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
