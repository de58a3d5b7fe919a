"""torchrun DDP on CPU (gloo): two processes agree with one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import make_tiny_model, tiny_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _actlora(nproc: int, *args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if nproc == 1:
        cmd = [sys.executable, "-m", "actlora_cli", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={_free_port()}",
            "-m",
            "actlora_cli",
            *args,
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_task):
    root = tmp_path_factory.mktemp("ddp")
    model = make_tiny_model(root, "bert", dropout=0.0)
    out = {}
    for nproc in (1, 2, "1-plan23", "2-plan23-cached"):
        # batch 9 in 3 micro-batches of 3: the 2 ranks get unequal shares (2 and 1), gradients accumulate
        # without sync, and 83 = 9 x 9 + 2 leaves a last batch too small for 2 ranks x 3 micro-batches
        # (dropped)
        cfg = tiny_config(
            model,
            tiny_task,
            root / f"run{nproc}",
            lora={"dropout": 0.0},
            task={"max_train_examples": 83},
            train={"epochs": 2, "lr": 5e-3, "batch_size": 9, "grad_accum": 3},
            probe={"steps": 4, "batch_size": 8},
        )
        path = root / f"cfg{nproc}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        if isinstance(nproc, str):
            # layers 2-3 planned, so the frozen prefix is the embeddings and two layers; the cached run stores
            # per rank what each rank sees, whatever the shuffle sends it
            cache = ["--set", "train.prefix_cache=memory", "--set", "train.prefix_cache_dtype=fp32"]
            plan = ["--layers", "2,3"]
            _actlora(int(nproc[0]), "train", "-c", str(path), *plan, *(cache if "cached" in nproc else []))
            out[nproc] = root / f"run{nproc}"
            continue
        _actlora(nproc, "probe", "-c", str(path))
        _actlora(nproc, "train", "-c", str(path), "--k", "2")
        _actlora(nproc, "eval", "-c", str(path))
        out[nproc] = root / f"run{nproc}"
    return out


def _json(path):
    return json.loads(path.read_text())


def test_probe_sums_across_ranks(runs):
    one, two = _json(runs[1] / "scores.json"), _json(runs[2] / "scores.json")
    assert two["world_size"] == 2
    assert two["tokens_seen"] == one["tokens_seen"] and two["examples_seen"] == one["examples_seen"] == 32
    assert two["raw"] == pytest.approx(one["raw"], rel=1e-6)


def test_both_ranks_select_the_same_layers(runs):
    one, two = _json(runs[1] / "train_summary.json"), _json(runs[2] / "train_summary.json")
    assert two["plan"]["ranks_agreeing"] == 2 and two["world_size"] == 2
    assert two["plan"]["layers"] == one["plan"]["layers"] and len(one["plan"]["layers"]) == 2


def test_two_process_adapter_equals_one_process(runs):
    """Same global batch, no dropout: DDP's averaged gradient is the one-process gradient even with unequal
    shares, so the adapters agree up to float summation order (18 AdamW steps at lr 5e-3)."""
    one = load_file(str(runs[1] / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(runs[2] / "adapter" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    moved = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k)
    assert moved > 1e-3  # training happened
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=2e-5)
    log1 = [json.loads(x)["loss"] for x in (runs[1] / "train_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x)["loss"] for x in (runs[2] / "train_log.jsonl").read_text().splitlines()]
    assert log2 == pytest.approx(log1, rel=1e-4)


def test_sharded_eval_equals_single_process(runs):
    one, two = _json(runs[1] / "eval.json"), _json(runs[2] / "eval.json")
    assert two["world_size"] == 2
    for split, values in one["metrics"].items():
        assert two["metrics"][split] == pytest.approx(values, abs=1e-9)


def test_two_process_cached_run_equals_one_process_uncached(runs):
    """The prefix cache under DDP (no dropout anywhere in this model): the same losses and adapter as one
    uncached process, with later epochs replaying stored prefixes on both ranks."""
    one = load_file(str(runs["1-plan23"] / "adapter" / "adapter_model.safetensors"))
    cached = load_file(str(runs["2-plan23-cached"] / "adapter" / "adapter_model.safetensors"))
    for key in one:
        torch.testing.assert_close(cached[key], one[key], rtol=0, atol=2e-5)
    log1 = [json.loads(x)["loss"] for x in (runs["1-plan23"] / "train_log.jsonl").read_text().splitlines()]
    logc = [
        json.loads(x)["loss"] for x in (runs["2-plan23-cached"] / "train_log.jsonl").read_text().splitlines()
    ]
    assert logc == pytest.approx(log1, rel=1e-4)
    info = _json(runs["2-plan23-cached"] / "train_summary.json")["frozen_prefix"]
    assert info["lowest_trained_layer"] == 2
    # rank 0's count: epoch 2 replays the micro-batches whose examples this rank already stored in epoch 1
    assert info["cache"]["forwards_replayed"] > 0 and info["cache"]["forwards_computed"] > 0


def test_auto_probe_stops_at_the_same_batch_on_every_rank(tmp_path, tiny_task):
    """probe.steps=auto decides on all-reduced means: both ranks stop after the same batch (a rank that went
    on would hang the other's next collective), and at the batch one process stops at, with its scores."""
    model = make_tiny_model(tmp_path, "bert", layers=6)
    docs = {}
    for nproc in (1, 2):
        probe = {"steps": "auto", "max_steps": 40, "batch_size": 8}
        cfg = tiny_config(model, tiny_task, tmp_path / f"run{nproc}", probe=probe, rank={"k": 2})
        path = tmp_path / f"cfg{nproc}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        _actlora(nproc, "probe", "-c", str(path))
        docs[nproc] = _json(tmp_path / f"run{nproc}" / "scores.json")
    one, two = docs[1], docs[2]
    assert two["world_size"] == 2 and two["steps"] == "auto"
    assert two["steps_used"] == one["steps_used"] and two["stop_reason"] == one["stop_reason"]
    assert (
        8 <= one["steps_used"] <= 40 and two["examples_seen"] == one["examples_seen"] == 8 * one["steps_used"]
    )
    assert two["raw"] == pytest.approx(one["raw"], rel=1e-6)
