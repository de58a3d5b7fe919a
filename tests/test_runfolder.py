"""Nothing lost, nothing run that should not be: a finished run is replaced only on request and set aside
until its replacement finishes, nothing actlora did not make is deleted, one writer per run folder, resume
refuses another run's checkpoint, a crafted checkpoint cannot run code, links out of the run folder are
refused, a kill -9 or a torn log line loses nothing, and compare refuses an eval of other weights."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from actlora_cli import runfolder, train
from actlora_cli.compare import compare_runs
from actlora_cli.config import Config
from actlora_cli.errors import ArtifactError, ConfigError
from actlora_cli.evaluation import run_eval
from tests.conftest import poison_loss, tiny_config

REPO = Path(__file__).resolve().parent.parent


def _cfg(tmp_path, tiny_models, tiny_task, name="run", **sections) -> Config:
    sections = {"rank": {"k": "all"}, **sections}
    return Config.model_validate(tiny_config(tiny_models["bert"], tiny_task, tmp_path / name, **sections))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6)


# --- replacing a run --------------------------------------------------------------------------------------


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 2})
    train.run_train(cfg)
    before = snapshot(cfg.run_dir)
    with pytest.raises(ConfigError) as info:
        train.run_train(cfg)
    problem = info.value.problems[0]
    assert problem.where == str(cfg.run_dir) and "a finished run is here" in problem.what
    assert "--overwrite" in problem.fix
    assert snapshot(cfg.run_dir) == before


def test_an_unfinished_run_offers_resume(tmp_path, tiny_models, tiny_task, monkeypatch):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"epochs": 2, "save_every": 3})
    poison_loss(monkeypatch, at_call=5)
    with pytest.raises(train.NonFiniteLoss):
        train.run_train(cfg)
    with pytest.raises(ConfigError) as info:
        train.run_train(cfg)
    assert "an unfinished run is here" in info.value.problems[0].what
    assert "--resume continues it" in info.value.problems[0].fix


def test_overwrite_sets_the_old_run_aside_until_the_new_one_finishes(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 3, "save_every": 1})
    train.run_train(cfg)
    run_eval(cfg, timing_batches=1)
    old = snapshot(cfg.run_dir)
    kept = {k: v for k, v in old.items() if k.split("/")[0] in train.OUTPUTS}

    # the replacement fails: the old run is whole in .replaced/, and nothing at the top still describes it
    real = poison_loss(monkeypatch, at_call=3)  # after a checkpoint of its own
    with pytest.raises(train.NonFiniteLoss):
        train.run_train(cfg, overwrite=True)
    aside = cfg.run_dir / runfolder.REPLACED
    assert {k: v for k, v in snapshot(aside).items() if k != runfolder.MARKER} == kept
    assert not (cfg.run_dir / "train_summary.json").exists() and not (cfg.run_dir / "eval.json").exists()

    # a second try keeps the finished run aside, drops the failed attempt, and removes .replaced when it is
    # done
    monkeypatch.setattr(train, "compute_loss", real)
    stale = cfg.run_dir / "checkpoints" / "step-999"
    stale.mkdir()
    summary = train.run_train(cfg, overwrite=True)
    assert summary["steps"] == 3 and not aside.exists() and not stale.exists()
    assert not (cfg.run_dir / "eval.json").exists()  # the old eval went with the old run


def test_a_folder_actlora_did_not_make_is_never_deleted(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 1})
    mine = cfg.run_dir / "model" / "weights.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("a user's file")
    before = snapshot(cfg.run_dir)
    for overwrite in (False, True):
        with pytest.raises(ConfigError) as info:
            train.run_train(cfg, overwrite=overwrite)
        assert snapshot(cfg.run_dir) == before
    assert "not made by actlora" in str(info.value)


def test_links_out_of_the_run_folder_are_refused(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 1})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("outside")
    cfg.run_dir.mkdir()
    (cfg.run_dir / "adapter").symlink_to(elsewhere, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="leads outside the run folder"):
            train.run_train(cfg, overwrite=overwrite)
    assert snapshot(elsewhere) == {"keep.txt": hashlib.sha256(b"outside").hexdigest()}
    assert runfolder.inside(cfg.run_dir / "train_log.jsonl", cfg.run_dir)  # a plain path inside is fine


# --- resume -----------------------------------------------------------------------------------------------


def test_resume_refuses_changed_training_settings_naming_them(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 2, "seed": 1})
    train.run_train(cfg)
    changed = cfg.with_overrides({"train.seed": 0, "train.lr": 1e-3})
    with pytest.raises(ArtifactError) as info:
        train.run_train(changed, resume=True)
    assert "train.lr 0.0002 -> 0.001" in str(info.value) and "train.seed 1 -> 0" in str(info.value)
    # what does not change learning may change: more steps, another eval batch
    more = cfg.with_overrides({"train.max_steps": 3, "train.eval_batch_size": 7})
    assert train.run_train(more, resume=True)["steps"] == 3


class _Payload:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 2})
    train.run_train(cfg)
    flag = tmp_path / "PWNED"
    state = cfg.run_dir / "checkpoints" / "last" / "state.pt"
    torch.save({"step": 1, "rng": _Payload(flag)}, state)
    with pytest.raises(ArtifactError) as info:
        train.run_train(cfg, resume=True)
    assert info.value.problems[0].where == str(state) and "cannot be read as a checkpoint" in str(info.value)
    assert not flag.exists()


def test_torn_last_log_line_is_dropped_on_resume(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 4, "save_every": 2})
    train.run_train(cfg)
    log = cfg.run_dir / "train_log.jsonl"
    with log.open("a") as handle:
        handle.write('{"step": 5, "epoch": 0.41, "lo')  # a kill during the write
    train.run_train(cfg.with_overrides({"train.max_steps": 6}), resume=True)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def _actlora(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "actlora_cli", *args]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def _wait_for_steps(proc: subprocess.Popen, log: Path, steps: int, timeout: float = 240) -> None:
    """Wait until the training subprocess has logged ``steps`` steps (or ended, or the time is up)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)


def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_models, tiny_task):
    sections = {"train": {"epochs": 3, "save_every": 2}}
    whole = _cfg(tmp_path, tiny_models, tiny_task, name="whole", **sections)
    train.run_train(whole)
    killed = _cfg(tmp_path, tiny_models, tiny_task, name="killed", **sections)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(killed.to_dict()))
    proc = _actlora("train", "-c", str(path))
    log = killed.run_dir / "train_log.jsonl"
    _wait_for_steps(proc, log, 9)  # a few checkpoints in, mid-run (36 steps in all)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed.run_dir / "train_summary.json").exists()
    summary = train.run_train(killed, resume=True)
    assert summary["steps"] == 36
    _same_weights(whole.run_dir, killed.run_dir)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 37))


# --- one writer -------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from actlora_cli.runfolder import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_the_same_folder_fails_at_once(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 1})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(cfg.run_dir)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(cfg.run_dir)
        started = time.time()
        second = _actlora("train", "-c", str(path))
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 2, out
        assert f"another actlora process is writing to this run folder (pid {holder.pid})" in out
        assert "Traceback" not in out
        assert time.time() - started < 60  # at once: before any model is loaded
        assert snapshot(cfg.run_dir) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: the folder is free again
    assert train.run_train(cfg)["steps"] == 1


# --- stale results ----------------------------------------------------------------------------------------


def test_compare_refuses_an_eval_of_other_weights(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 2})
    train.run_train(cfg)
    doc = run_eval(cfg, timing_batches=1)
    assert doc["weights_hash"] == json.loads((cfg.run_dir / "train_summary.json").read_text())["weights_hash"]
    compare_runs([cfg.run_dir], cfg.run_dir)  # consistent: fine
    old_eval = (cfg.run_dir / "eval.json").read_text()
    train.run_train(cfg.with_overrides({"train.lr": 1e-3}), overwrite=True)
    (cfg.run_dir / "eval.json").write_text(old_eval)  # the previous adapter's eval, copied back
    with pytest.raises(ArtifactError) as info:
        compare_runs([cfg.run_dir], cfg.run_dir)
    assert info.value.problems[0].where == str(cfg.run_dir / "eval.json")
    assert "it was trained again" in info.value.problems[0].what


# --- exit codes -------------------------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_the_resume_command_and_resume_finishes(tmp_path, tiny_models, tiny_task):
    # 240 steps: long enough that the interrupt lands mid-run on a fast or a loaded machine
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"epochs": 20, "save_every": 2})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = _actlora("train", "-c", str(path))
    _wait_for_steps(proc, cfg.run_dir / "train_log.jsonl", 5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert f"continue from the last checkpoint with: actlora train -c {path} --resume" in out
    assert "Traceback" not in out
    assert train.run_train(cfg, resume=True)["steps"] == 240


def test_a_diverged_run_exits_3(tmp_path, tiny_models, tiny_task):
    """Not bad input (2), not a crash (1): a script can retry with another lr or precision."""
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 3, "lr": 1e30, "max_grad_norm": None})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = _actlora("train", "-c", str(path))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out
    assert "the loss is" in out and "Traceback" not in out


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, train={"max_steps": 1})
    cfg.run_dir.write_text("not a folder")
    with pytest.raises(ConfigError) as info:
        train.run_train(cfg)
    assert info.value.problems[0].where == "output_dir" and "is a file" in info.value.problems[0].what
    assert cfg.run_dir.read_text() == "not a folder"
