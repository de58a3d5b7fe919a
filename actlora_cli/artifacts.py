"""Typed JSON artefacts: every file a stage writes has a ``kind`` and a ``schema_version``, is written
atomically (never half-written), and is checked when read (kind, version, model identity)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from .config import not_utf8, read_utf8
from .errors import ArtifactError, Problem

SCHEMA_VERSION = 1

# kind -> (file name in the run folder, command that writes it)
KINDS = {
    "scores": ("scores.json", "actlora probe"),
    "selection": ("selection.json", "actlora rank"),
    "train_summary": ("train_summary.json", "actlora train"),
    "eval": ("eval.json", "actlora eval"),
    "costs": ("costs.json", "actlora profile"),
    "ablation": ("ablation.json", "actlora ablate"),
    "study": ("<study>.json", "actlora study"),
    "sweep": ("sweep.json", "actlora sweep"),
    "comparison": ("<report>.json", "actlora compare --out"),
}

# kind -> {key: type}: the keys every reader of the kind may rely on, checked by read_artifact. A nested dict
# is a nested mapping; float accepts whole numbers (never booleans); list[T] / dict[str, T] check every item;
# T | None allows null. Every one of these has been written since schema version 1 (a key added later is
# read with .get and a default, and is not listed here).
SCHEMAS: dict[str, dict[str, Any]] = {
    "scores": {"model": {"name": str, "num_layers": int}, "scores": list[float]},
    "selection": {
        "model": {"name": str},
        "layers": list[int],
        "k": int,
        "tau": float | None,
        "rule": str,
        "ranking": list[int] | None,
        "cumulative_importance": list[float] | None,
        "coverage": float | None,
    },
    "train_summary": {"model": {"name": str, "num_layers": int}, "plan": {"layers": list[int]}},
    "eval": {"model": {"name": str}, "metrics": dict[str, dict[str, float]]},
    "costs": {
        "model": {"name": str, "num_layers": int},
        "step_seconds": {"lowest": list[float], "all": float},
        "prefix_forward_seconds": list[float],
    },
}


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); an artefact gets the mode any new file gets here
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def versions() -> dict[str, str]:
    """Versions of what produced an artefact (imports are local: torch is heavy)."""
    import peft
    import torch
    import transformers

    from . import __version__

    return {
        "actlora": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def provenance(config_hash: str) -> dict[str, Any]:
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "config_hash": config_hash,
        "versions": versions(),
    }


def write_resolved(cfg) -> None:
    """``<run>/config.resolved.yaml``: the config after defaults, file, overrides and flags."""
    from .config import dump_yaml

    atomic_write_text(cfg.run_dir / "config.resolved.yaml", dump_yaml(cfg))


def write_artifact(path: Path, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write ``payload`` as artefact ``kind`` at ``path``; returns the document written."""
    doc = {"kind": kind, "schema_version": SCHEMA_VERSION, **payload}
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return doc


def finish_stage(cfg, kind: str, payload: dict[str, Any], is_main: bool = True) -> dict[str, Any]:
    """How every stage ends: its artefact ``kind`` in the run folder with provenance, and the resolved config
    beside it, written by the main process; then every rank waits, so none tears its process group down while
    rank 0 still writes (gloo has been seen to abort at exit otherwise). Returns the document."""
    from .distributed import barrier

    doc = {**payload, "provenance": provenance(cfg.hash())}
    if is_main:
        doc = write_artifact(cfg.run_dir / KINDS[kind][0], kind, doc)
        write_resolved(cfg)
    barrier()
    return doc


def folder_hash(folder: Path) -> str:
    """Short sha256 over a folder's files (relative names and bytes, sorted; dotfiles such as the .actlora
    marker left out): the identity of a set of trained weights, so eval.json can say which ones it
    measured."""
    digest = hashlib.sha256()
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_artifact(path: Path, kind: str, model_name: str | None = None) -> dict[str, Any]:
    """Read and check an artefact: it exists, parses, has the expected kind and version, and (when
    ``model_name`` is given) was made for that model. Every failure says how to fix it."""
    path = Path(path)
    _, maker = KINDS.get(kind, (path.name, "the stage that writes it"))
    if not path.is_file():
        raise ArtifactError(Problem(str(path), f"no {kind} file", f"run `{maker}` with this config first"))
    try:
        doc = json.loads(read_utf8(path))
    except UnicodeDecodeError as exc:
        raise ArtifactError(Problem(str(path), not_utf8(exc), f"re-run `{maker}`")) from None
    except OSError as exc:
        what = f"cannot be read ({exc.strerror or exc})"
        raise ArtifactError(Problem(str(path), what, "check the file's permissions")) from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(Problem(str(path), f"not valid JSON ({exc.msg})", f"re-run `{maker}`")) from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        found = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise ArtifactError(
            Problem(str(path), f"expected a '{kind}' artefact, found '{found}'", f"run `{maker}`")
        )
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            Problem(
                str(path),
                f"schema version {doc.get('schema_version')} but this actlora reads version {SCHEMA_VERSION}",
                f"re-run `{maker}` with this version of actlora",
            )
        )
    if model_name is not None:
        model = doc.get("model")
        made_for = model.get("name") if isinstance(model, dict) else None
        if made_for != model_name:
            raise ArtifactError(
                Problem(
                    str(path),
                    f"made for model '{made_for}', but the config names model '{model_name}'",
                    f"re-run `{maker}` for this model, or set model.name={made_for}, "
                    "or point output_dir at the run made for this model",
                )
            )
    wrong = schema_problem(doc, SCHEMAS.get(kind, {})) or consistency_problem(kind, doc)
    if wrong:
        raise ArtifactError(
            Problem(str(path), wrong, f"re-run `{maker}` (the file was edited, damaged or made elsewhere)")
        )
    return doc


def schema_problem(doc: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> str | None:
    """What in ``doc`` breaks ``schema`` (see SCHEMAS), or None."""
    for key, expected in schema.items():
        name = prefix + key
        if key not in doc:
            return f"'{name}' is missing"
        value = doc[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                return f"'{name}' must be a mapping, found {_shown(value)}"
            nested = schema_problem(value, expected, f"{name}.")
            if nested:
                return nested
        elif not _fits(value, expected):
            return f"'{name}' must be {_describe(expected)}, found {_shown(value)}"
    return None


def consistency_problem(kind: str, doc: dict[str, Any]) -> str | None:
    """What contradicts itself in a well-formed ``doc``, or None: a scores vector must have one score per
    layer of the model it records."""
    if kind == "scores" and len(doc["scores"]) != doc["model"]["num_layers"]:
        scored, layers = len(doc["scores"]), doc["model"]["num_layers"]
        return f"{scored} layer scores, but its model record says the model has {layers} layers"
    if kind == "costs":
        layers = doc["model"]["num_layers"]
        for key, values in (("step_seconds.lowest", doc["step_seconds"]["lowest"]),
                            ("prefix_forward_seconds", doc["prefix_forward_seconds"])):  # fmt: skip
            if len(values) != layers:
                return f"{len(values)} values in '{key}', but its model record says {layers} layers"
    return None


def _fits(value: Any, expected: Any) -> bool:
    origin = get_origin(expected)
    if origin in (Union, types.UnionType):
        return any(_fits(value, option) for option in get_args(expected))
    if origin is list:
        return isinstance(value, list) and all(_fits(item, get_args(expected)[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(item, get_args(expected)[1]) for item in value.values())
    if expected is None or expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


_NAMES = {str: "text", int: "a whole number", float: "a number", dict: "a mapping", list: "a list"}


def _describe(expected: Any) -> str:
    origin = get_origin(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in get_args(expected))
    if origin is list:
        return f"a list of {_plural(get_args(expected)[0])}"
    if origin is dict:
        return f"a mapping to {_plural(get_args(expected)[1])}"
    if expected is type(None):
        return "null"
    return _NAMES.get(expected, getattr(expected, "__name__", str(expected)))


def _plural(expected: Any) -> str:
    return {str: "texts", int: "whole numbers", float: "numbers"}.get(expected) or _describe(expected)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolved_config(folder: Path):
    """The Config a run folder was made with (its config.resolved.yaml), read with today's schema."""
    import yaml

    from .config import Config

    return Config.model_validate(yaml.safe_load((folder / "config.resolved.yaml").read_text()))


def made_from(path: Path, kind: str, cfg) -> dict[str, Any] | None:
    """The ``kind`` artefact at ``path`` when the folder's config.resolved.yaml, read with today's schema
    (a setting added since takes its default), equals ``cfg`` (the output folder aside); else None. What lets
    a study or the frontier reuse the probes and runs an interrupted invocation already made."""
    import yaml

    try:
        doc = read_artifact(path, kind)
        made = resolved_config(path.parent)
    except (ArtifactError, OSError, ValueError, yaml.YAMLError):
        return None
    same = {**made.to_dict(), "output_dir": None} == {**cfg.to_dict(), "output_dir": None}
    return doc if same else None
