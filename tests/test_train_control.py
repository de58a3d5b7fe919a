"""Controlling a training run: train.final_weights=best keeps the best evaluation's weights, and Ctrl-C stops
after a whole step with a checkpoint that resumes to the uninterrupted run's weights (one process and
torchrun)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from actlora_cli import interrupt, render, train, ui
from actlora_cli.config import Config
from actlora_cli.distributed import Dist
from actlora_cli.evaluation import run_eval
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent


def _cfg(tmp_path, tiny_models, tiny_task, name="run", **sections) -> Config:
    sections = {"rank": {"k": "all"}, **sections}
    return Config.model_validate(tiny_config(tiny_models["bert"], tiny_task, tmp_path / name, **sections))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol)


# --- train.final_weights: best ----------------------------------------------------------------------------


def test_final_weights_best_keeps_the_best_evaluation_and_eval_reproduces_it(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    """Descend the loss for 12 steps, then climb it (its sign flipped) so that the metric gets worse by
    construction: adapter/ must hold the best evaluation's weights, not the last step's, and eval on it
    must measure the best evaluation's metrics."""
    real_loss = train.compute_loss
    calls = {"n": 0}

    def learn_then_unlearn(logits, labels, regression, reduction="mean"):
        calls["n"] += 1  # one call per step (grad_accum 1)
        loss = real_loss(logits, labels, regression, reduction)
        return loss if calls["n"] <= 12 else -loss

    monkeypatch.setattr(train, "compute_loss", learn_then_unlearn)
    settings = {"epochs": 2, "lr": 3e-2, "eval_steps": 2, "final_weights": "best", "save_total_limit": 1}
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train=settings)
    summary = train.run_train(cfg)

    history = summary["history"]
    accuracy = [h["metrics"]["validation"]["accuracy"] for h in history]
    best = history[accuracy.index(max(accuracy))]  # the first of the highest: a later tie is not better
    assert best["step"] < summary["steps"] == 24 and accuracy[-1] < max(accuracy)  # it did get worse
    assert summary["weights"] == {
        "from": "best",
        "step": best["step"],
        "metric": "validation accuracy",
        "value": max(accuracy),
    }
    assert summary["best"]["step"] == best["step"]
    assert summary["final_metrics"] == best["metrics"]
    ckpt = cfg.run_dir / "checkpoints"
    kept = _weights(cfg.run_dir / "adapter")
    _assert_same(_weights(ckpt / f"step-{best['step']}"), kept, atol=0)
    last = _weights(ckpt / "last" / "adapter")  # the last step's weights: not the ones kept
    assert any(not torch.equal(kept[k], last[k]) for k in kept)
    # save_total_limit=1 keeps the newest step copy and the best evaluation's
    copies = sorted(p.name for p in ckpt.glob("step-*"))
    assert copies == sorted({f"step-{best['step']}", "step-24"})
    predictions = json.loads((cfg.run_dir / "predictions.json").read_text())
    assert predictions["step"] == best["step"]

    with ui.out.capture() as shown:
        render.train_summary(summary, cfg.run_dir)
    assert f"best: step {best['step']}, validation accuracy {max(accuracy):.4f}" in shown.get()

    doc = run_eval(cfg, timing_batches=1)
    assert doc["metrics"]["validation"] == pytest.approx(best["metrics"]["validation"], abs=1e-6)
    assert doc["weights_hash"] == summary["weights_hash"]


def test_final_weights_last_is_the_default(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 3})
    summary = train.run_train(cfg)
    assert summary["weights"] == {"from": "last", "step": 3}
    _assert_same(
        _weights(cfg.run_dir / "checkpoints" / "last" / "adapter"), _weights(cfg.run_dir / "adapter")
    )


# --- Ctrl-C ------------------------------------------------------------------------------------------------

# Trains through the command line (so the exit code and messages are the CLI's) and interrupts itself
# with a real SIGINT once step N has run, as a Ctrl-C that lands mid-run does; only the ranks listed in
# SIGINT_RANKS are signalled.
INTERRUPTING = textwrap.dedent(
    """
    import os, signal, sys
    from actlora_cli import train
    from actlora_cli.cli import app

    real, at = train.train_step, int(os.environ["SIGINT_AFTER_STEP"])
    ranks = [int(r) for r in os.environ.get("SIGINT_RANKS", "0").split(",")]

    def step_then_interrupt(run, global_batch, step, timer):
        result = real(run, global_batch, step, timer)
        if step + 1 == at and run.ctx.rank in ranks:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    train.train_step = step_then_interrupt
    sys.argv = ["actlora", *sys.argv[1:]]
    app()
    """
)


def _interrupting_run(tmp_path, cfg: Config, at: int, nproc: int = 1, ranks: str = "0"):
    path = tmp_path / f"{cfg.run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    script = tmp_path / "interrupting.py"
    script.write_text(INTERRUPTING)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "SIGINT_AFTER_STEP": str(at),
           "SIGINT_RANKS": ranks, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    if nproc == 1:
        cmd = [sys.executable, str(script)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={port}", str(script)]  # fmt: skip
    # a deadlock would hang here: the timeout fails the test instead
    return subprocess.run(
        [*cmd, "train", "-c", str(path)], env=env, capture_output=True, text=True, timeout=400, check=False
    )


def test_ctrl_c_checkpoints_the_step_and_resume_equals_the_uninterrupted_run(
    tmp_path, tiny_models, tiny_task
):
    # 24 steps, evaluations and checkpoints at 12 and 24 only: step 7 has no checkpoint but the interrupt's
    sections = {"train": {"epochs": 2}}
    whole = _cfg(tmp_path, tiny_models, tiny_task, name="whole", **sections)
    train.run_train(whole)
    cut = _cfg(tmp_path, tiny_models, tiny_task, name="cut", **sections)
    proc = _interrupting_run(tmp_path, cut, at=7)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    assert "Ctrl-C: stopping after this step with a checkpoint" in out
    assert f"interrupted after step 7 of 24: its checkpoint is {cut.run_dir / 'checkpoints' / 'last'}" in out
    assert "continue from the last checkpoint with: actlora train -c" in out and "--resume" in out
    assert "Traceback" not in out
    state = torch.load(cut.run_dir / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["step"] == 7
    log = cut.run_dir / "train_log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 8))
    assert not (cut.run_dir / "train_summary.json").exists() and not (cut.run_dir / "adapter").exists()

    summary = train.run_train(cut, resume=True)
    assert summary["steps"] == 24
    _assert_same(_weights(whole.run_dir / "adapter"), _weights(cut.run_dir / "adapter"))
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 25))


def test_a_second_ctrl_c_stops_at_once_and_the_handler_is_put_back():
    before = signal.getsignal(signal.SIGINT)
    with interrupt.stop_at_step_end(Dist(0, 1, 0, torch.device("cpu"))) as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGINT)  # the first: only asks
        assert requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_ctrl_c_under_torchrun_stops_every_rank_after_the_same_step(tmp_path, tiny_models, tiny_task):
    """Only rank 1 is signalled (signals reach ranks at different moments): both ranks stop after that step,
    rank 0 writes its checkpoint, and neither waits for the other forever."""
    cfg = _cfg(tmp_path, tiny_models, tiny_task, name="ddp", train={"epochs": 2})
    proc = _interrupting_run(tmp_path, cfg, at=5, nproc=2, ranks="1")
    out = proc.stdout + proc.stderr
    # torchrun exits 1 and names the first rank to end, with its 130; it then ends the others (after the
    # checkpoint's barrier, so the checkpoint is whole)
    assert proc.returncode == 1 and "exitcode  : 130" in out, out
    assert out.count("continue from the last checkpoint with:") == 1  # rank 0 speaks
    state = torch.load(cfg.run_dir / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["step"] == 5
    log = cfg.run_dir / "train_log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 6))
