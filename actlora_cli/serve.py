"""Using a trained run: ``predict`` scores a JSON Lines file with it, batched, labels by name where the task
has names; ``export`` merges the adapter into the base weights and writes a model folder (with its tokenizer)
that plain ``from_pretrained`` serves. Both refuse to replace an existing output unless told to, and write
atomically (a stopped run leaves no partial file or folder)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts
from .config import Config
from .data import Examples, encode, task_spec
from .distributed import Dist, setup
from .errors import ConfigError, DataError, Problem
from .evaluation import check_labels, load_trained, predict
from .modeling import autocast_context, autocast_settings


def _refuse_existing(path: Path, overwrite: bool, flag: str) -> None:
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ConfigError(
            [Problem(str(path), "exists already", f"{flag} replaces it, or choose another path")]
        )


def read_inputs(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON Lines rows, each with the task's text fields (every problem named by line)."""
    if not path.is_file():
        raise DataError(Problem(str(path), "no such file", "give a JSON Lines file, one object per line"))
    rows, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"{path}:{number}", f"not JSON ({exc.msg})", "one JSON object per line"))
            continue
        missing = [f for f in fields if not isinstance(row, dict) or not isinstance(row.get(f), str)]
        if missing:
            problems.append(
                Problem(f"{path}:{number}", f"no text in {', '.join(missing)}", f"fields: {fields}")
            )
            continue
        rows.append(row)
    if problems:
        raise DataError(problems[:20])
    if not rows:
        raise DataError(Problem(str(path), "holds no examples", "one JSON object per line"))
    return rows


def run_predict(
    cfg: Config, input_path: Path, output_path: Path, overwrite: bool = False, batch_size: int | None = None
) -> dict[str, Any]:
    """Predict every row of ``input_path`` with the run's trained model; write ``output_path`` (the rows with
    ``prediction``, ``label_id`` and ``probabilities``, or ``prediction`` alone for regression)."""
    started = time.perf_counter()
    output_path = Path(output_path)
    _refuse_existing(output_path, overwrite, "--overwrite")
    spec = task_spec(cfg.task)
    rows = read_inputs(Path(input_path), spec.text_fields)
    ctx = setup()
    if ctx.world > 1:
        raise ConfigError([Problem("torchrun", "predict runs in one process", "run `actlora predict` alone")])
    check_labels(cfg, spec)
    loaded, model = load_trained(cfg, spec.num_labels, ctx)
    texts = [[row[f] for row in rows] for f in spec.text_fields]
    data = encode(loaded.tokenizer, Examples(texts, [0] * len(rows)), cfg.task.max_length, spec.is_regression)
    autocast = autocast_context(autocast_settings(cfg.train.precision, ctx.device)[0], ctx.device)
    logits = predict(model, data, batch_size or cfg.train.eval_batch_size, ctx, autocast, progress="predict")
    lines = []
    for row, out in zip(rows, logits, strict=True):
        if spec.is_regression:
            result = {"prediction": float(out[0])}
        else:
            shifted = np.exp(out - out.max())
            probs = shifted / shifted.sum()
            label = int(out.argmax())
            name = spec.label_names[label] if spec.label_names else label
            result = {
                "prediction": name,
                "label_id": label,
                "probabilities": [round(float(p), 6) for p in probs],
            }
        lines.append(json.dumps({**row, **result}))
    artifacts.atomic_write_text(output_path, "\n".join(lines) + "\n")
    return {
        "input": str(input_path),
        "output": str(output_path),
        "examples": len(rows),
        "labels": list(spec.label_names) if spec.label_names else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_export(cfg: Config, dest: Path, overwrite: bool = False) -> dict[str, Any]:
    """The base with the run's adapter merged in (or the fully fine-tuned model), and the tokenizer, as one
    model folder at ``dest``."""
    dest = Path(dest)
    if cfg.model.quantization != "none":
        raise ConfigError(
            [
                Problem(
                    "model.quantization",
                    f"{cfg.model.quantization}: merging into a 4-bit base re-quantises the weights, which "
                    "gives another model than the one trained",
                    "export from a run on an unquantised base, or serve the adapter unmerged",
                )
            ]
        )
    _refuse_existing(dest, overwrite, "--overwrite")
    if dest.exists() and not (dest.is_dir() and (dest / "config.json").is_file()):
        # --overwrite replaces a model folder, never an arbitrary file or folder named by mistake
        raise ConfigError([Problem(str(dest), "exists and is not a model folder (no config.json)",
                                   "choose a new path; nothing there is deleted")])  # fmt: skip
    spec = task_spec(cfg.task)
    ctx: Dist = setup()
    loaded, model = load_trained(cfg, spec.num_labels, ctx)
    merged = model if cfg.lora.method == "full" else model.merge_and_unload()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # written beside dest (the same filesystem) and renamed into place: never a half-written model folder
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private; a model folder gets the usual mode
    try:
        merged.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        old = None
        if dest.exists():  # a model folder (checked above), replaced as --overwrite asked: moved aside first
            old = dest.with_name(f".{dest.name}.replaced")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        try:
            staging.rename(dest)
        except OSError:
            if old is not None:
                old.rename(dest)  # put the earlier model back
            raise
        if old is not None:
            shutil.rmtree(old)  # the new folder is in place: the old one may go
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "dest": str(dest),
        "method": cfg.lora.method,
        "num_labels": spec.num_labels,
        "files": sorted(p.name for p in dest.iterdir()),
    }
