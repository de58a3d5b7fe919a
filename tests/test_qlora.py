"""QLoRA: a 4-bit NF4 double-quantised base (bitsandbytes runs it on CPU), bf16 compute, the head kept out of
4-bit and trainable in fp32, no blanket upcast of the frozen model, and the backward cut kept."""

from __future__ import annotations

import pytest
import torch

from actlora_cli import adapters, train
from actlora_cli.config import Config, ModelSection
from actlora_cli.modeling import load_model, locate
from tests.conftest import NUM_LAYERS, grad_reach, make_tiny_model, tiny_config

bnb = pytest.importorskip(
    "bitsandbytes", reason="bitsandbytes is not installed (pip install 'actlora[qlora]')"
)
HIDDEN = 128  # bitsandbytes' 4-bit CPU kernels work in blocks of 64


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("qlora"), "llama", hidden=HIDDEN)


@pytest.fixture
def qlora_model(llama_dir):
    cfg = ModelSection(name=str(llama_dir), dtype="bfloat16", quantization="nf4")
    return load_model(cfg, 2, torch.device("cpu"), pad_token_id=0)


def test_base_is_nf4_double_quantised_and_head_is_not(qlora_model):
    arch = locate(qlora_model)
    q = qlora_model.get_submodule(arch.projections["q"][0])
    assert isinstance(q, bnb.nn.Linear4bit)
    assert q.weight.quant_state.quant_type == "nf4" and q.weight.quant_state.nested  # double quantisation
    assert q.compute_dtype == torch.bfloat16
    head = qlora_model.get_submodule(arch.head_modules[0])
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.bfloat16


def test_only_trainable_weights_are_upcast_and_the_cut_holds(qlora_model):
    arch = locate(qlora_model)
    wrapped = adapters.apply_lora(qlora_model, arch, Config().lora, [2, 3])
    for name, param in wrapped.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, name  # LoRA and the head: fp32 master weights
        elif param.dtype != torch.uint8:
            assert param.dtype == torch.bfloat16, name  # embeddings, norms: no blanket fp32 upcast
    wrapped.train()
    calls, inputs, handles = grad_reach(wrapped, arch)
    ids = torch.randint(6, 20, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    train.compute_loss(logits, torch.tensor([0, 1]), False).backward()
    for h in handles:
        h.remove()
    assert calls == [0, 0, 1, 1] and inputs[:3] == [False, False, False]
    lora_b = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert all(p.grad is not None for p in lora_b)


def test_qlora_trains_and_evaluates(tmp_path, llama_dir, tiny_task):
    from actlora_cli.evaluation import run_eval

    cfg = Config.model_validate(
        tiny_config(
            llama_dir,
            tiny_task,
            tmp_path / "run",
            model={"dtype": "bfloat16", "quantization": "nf4"},
            rank={"k": "all"},
            train={"precision": "bf16", "max_steps": 4, "lr": 5e-3},
        )
    )
    summary = train.run_train(cfg)
    assert summary["steps"] == 4 and summary["precision"] == "bfloat16"
    # per layer: q (A: r x d, B: d x r) and v (A: r x d, B: kv_dim x r, kv_dim = d / 2 with 2 of 4 heads);
    # plus the score head (d x 2, no bias)
    r, d = 8, HIDDEN
    assert summary["trainable_parameters"] == NUM_LAYERS * (2 * r * d + r * d + r * d // 2) + d * 2
    doc = run_eval(cfg, timing_batches=2)
    assert doc["metrics"]["validation"] == pytest.approx(summary["final_metrics"]["validation"], abs=1e-9)
    assert "skipped" in doc["timing"]["merged"]
    assert "time_to_first_token_ms_p50" in doc["timing"]
