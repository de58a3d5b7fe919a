"""What only a CUDA device can show: bf16 autocast with fused AdamW, memory accounting, and the QLoRA memory
saving. Skipped with the reason on machines without CUDA; scripts/gpu_check.py runs them on a lent GPU."""

from __future__ import annotations

import pytest
import torch

from actlora_cli import train
from actlora_cli.config import Config
from tests.conftest import make_tiny_model, poison_loss, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (run scripts/gpu_check.py on one)"
    ),
]


def _run(tmp_path, model_dir, tiny_task, **model):
    cfg = Config.model_validate(
        tiny_config(
            model_dir,
            tiny_task,
            tmp_path,
            model=model,
            rank={"k": "all"},
            train={"max_steps": 4, "precision": "auto"},
        )
    )
    return train.run_train(cfg)


def test_cuda_training_uses_bf16_autocast_and_records_memory(tmp_path, tiny_task, tmp_path_factory):
    model_dir = make_tiny_model(tmp_path_factory.mktemp("gpu"), "bert", hidden=128)
    summary = _run(tmp_path / "bf16", model_dir, tiny_task)
    assert summary["device"].startswith("cuda")
    assert summary["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert summary["peak_memory_mib"] > 0
    import json

    log = [json.loads(x) for x in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["mem_peak_backward_mib"] >= r["mem_after_forward_mib"] > 0 for r in log)


def test_qlora_uses_less_memory_than_bf16(tmp_path, tiny_task, tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    model_dir = make_tiny_model(tmp_path_factory.mktemp("gpu_q"), "llama", hidden=512)
    bf16 = _run(tmp_path / "bf16", model_dir, tiny_task, dtype="bfloat16")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    nf4 = _run(tmp_path / "nf4", model_dir, tiny_task, dtype="bfloat16", quantization="nf4")
    assert nf4["peak_memory_mib"] < bf16["peak_memory_mib"]


def test_cuda_prefix_cache_bf16_replay_stays_close_to_recomputation(tmp_path, tiny_task, tmp_path_factory):
    """bf16 autocast on a bf16 base: the stored states are the bf16 states the prefix computes, replayed
    through pinned host memory; the losses follow the uncached run without prefix dropout (kernels chosen by
    batch shape make them close, not bit-equal)."""
    import json

    model_dir = make_tiny_model(tmp_path_factory.mktemp("gpu_c"), "bert", hidden=128)
    losses = {}
    for name, extra in (("plain", {"frozen_dropout": False}), ("cached", {"prefix_cache": "memory"})):
        cfg = Config.model_validate(
            tiny_config(
                model_dir,
                tiny_task,
                tmp_path / name,
                model={"dtype": "bfloat16"},
                rank={"layers": [2, 3]},
                train={"epochs": 3, "precision": "bf16", **extra},
            )
        )
        summary = train.run_train(cfg)
        losses[name] = [
            json.loads(x)["loss"] for x in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()
        ]
    assert summary["frozen_prefix"]["cache"]["dtype"] == "bfloat16"
    assert summary["frozen_prefix"]["cache"]["forwards_replayed"] > 0
    torch.testing.assert_close(
        torch.tensor(losses["cached"]), torch.tensor(losses["plain"]), rtol=2e-2, atol=2e-2
    )


def test_cuda_adalora_resumes_with_its_importance_on_the_device(
    tmp_path, tiny_task, tmp_path_factory, monkeypatch
):
    """The checkpoint is read onto the CPU; AdaLoRA's importance averages must go back to the GPU or the next
    reallocation mixes devices."""
    model_dir = make_tiny_model(tmp_path_factory.mktemp("gpu_a"), "bert", hidden=128)
    cfg = Config.model_validate(
        tiny_config(
            model_dir,
            tiny_task,
            tmp_path / "run",
            lora={"method": "adalora"},
            rank={"k": "all"},
            train={"epochs": 2, "save_every": 5},
        )
    )
    real = poison_loss(monkeypatch, at_call=8)
    with pytest.raises(train.NonFiniteLoss):
        train.run_train(cfg)
    monkeypatch.setattr(train, "compute_loss", real)
    state = torch.load(cfg.run_dir / "checkpoints" / "last" / "state.pt", weights_only=False)
    assert state["step"] == 5 and state["method_state"]["ipt"]  # inside the pruning phase: importance kept
    summary = train.run_train(cfg, resume=True)
    assert summary["steps"] == 24
