"""Training checkpoints: the trained weights in their method's own format plus the loop state (optimizer,
scheduler, grad scaler, RNG, the method's extra state and the running totals), swapped in whole so a crash
mid-save leaves the previous checkpoint intact; and exact resume from them."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import runfolder
from .adapters import Adapted
from .errors import ArtifactError, Problem


def rng_state() -> dict[str, Any]:
    """Every generator's state in plain types and tensors, so that a checkpoint loads with
    ``torch.load(weights_only=True)`` (numpy's key array travels as a list)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(
    folder: Path, adapted: Adapted, optimizer, scheduler, scaler, step: int, extra: dict
) -> None:
    """Adapter + head in PEFT's format (the whole model for full fine-tuning), and the loop state; written
    beside and swapped in, so a crash mid-save leaves the previous checkpoint whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    runfolder.mark(folder.parent)  # checkpoints/ is actlora's: a later --overwrite may replace it
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    adapted.save(tmp / adapted.weights_dir)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "method_state": adapted.extra_state(),
            **extra,
        },
        tmp / "state.pt",
    )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    # two renames: between them only ``.old`` is whole, which last_checkpoint falls back to
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The last complete checkpoint: ``last``, or ``last.old`` when a crash came between the two renames."""
    for name in ("last", "last.old"):
        if (ckpt_dir / name / "state.pt").is_file():
            return ckpt_dir / name
    return None


def load_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's loop state, unpickled with ``weights_only=True``: tensors and plain values only, so a
    crafted state.pt cannot run code on ``--resume`` (sweeps resume by themselves). A damaged or foreign file
    is an ArtifactError naming it."""
    path = Path(checkpoint) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError or zip errors)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        older = [p.name for p in sorted(path.parent.parent.glob("step-*"))]
        raise ArtifactError(
            Problem(
                str(path),
                f"cannot be read as a checkpoint ({first_line[:200]})",
                "it is damaged or was not made by actlora; start afresh with --overwrite"
                + (
                    f" (the weights of {', '.join(older)} are kept, but not their loop state)"
                    if older
                    else ""
                ),
            )
        ) from None
