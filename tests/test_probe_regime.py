"""probe.regime=training: each probe batch is one optimizer step of LoRA on every layer. Checked against a
hand-written loop (peft LoRA, AdamW, plain hooks and .grad), step by step against the inference regime, and
for the model it hands back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from actlora_cli.config import Config
from actlora_cli.data import collate, encoded_split, task_spec
from actlora_cli.modeling import load_for
from actlora_cli.probe import probe_batches, run_probe
from actlora_cli.scoring import SCORERS
from actlora_cli.scoring.regime import Training
from tests.conftest import make_tiny_model, tiny_config

CPU = torch.device("cpu")
KINDS = ("grad_norm", "fisher", "taylor")


def _cfg(model_dir, task, run_dir, scorer="activation_norm", regime="training", **lora) -> Config:
    return Config.model_validate(
        tiny_config(
            model_dir,
            task,
            run_dir,
            probe={"scorer": scorer, "regime": regime, "steps": 4, "batch_size": 8, "seed": 3},
            train={"lr": 5e-3},
            lora=lora,
        )
    )


def _probe_batches(cfg: Config, tokenizer) -> list[dict[str, torch.Tensor]]:
    """The batches the probe draws (the data pipeline is not what these tests check)."""
    spec = task_spec(cfg.task)
    data = encoded_split(tokenizer, cfg.task, spec, cfg.task.train_split)
    return [
        collate(data, i) for i in probe_batches(data, cfg.probe.steps, cfg.probe.batch_size, cfg.probe.seed)
    ]


def _hand_loop(cfg: Config) -> dict[str, np.ndarray]:
    """Reference, written out: peft LoRA (q, v of every layer; the BERT head 'classifier' trained), AdamW at
    train.lr, train mode, gradient clipping at 1.0; per step the attention output projection's output read by
    a plain hook (per-token L2 norm in float64, mean over non-pad tokens) and the gradient of the step's loss
    with respect to each base q/v weight, recorded before the update. Returns the per-step values."""
    from peft import LoraConfig, get_peft_model

    loaded = load_for(cfg.model, 2, CPU)
    model, arch = loaded.model, loaded.arch
    batches = _probe_batches(cfg, loaded.tokenizer)
    base = [[model.get_submodule(arch.projections[t][i]).weight for t in ("q", "v")] for i in range(4)]
    outputs = [model.get_submodule(arch.projections["o"][i]) for i in range(4)]
    torch.manual_seed(cfg.probe.seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=["attention.self.query", "attention.self.value"],
        modules_to_save=["classifier"],
    )
    peft_model = get_peft_model(model, lora)
    trained = [p for p in peft_model.parameters() if p.requires_grad]
    for w in (w for pair in base for w in pair):
        w.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=cfg.train.lr, weight_decay=0.0)
    peft_model.train()
    captured = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, out.detach()))
        for i, m in enumerate(outputs)
    ]
    rows = {"activation_norm": [], **{k: [] for k in KINDS}}
    for batch in batches:
        mask = batch["attention_mask"].double()
        logits = peft_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        rows["activation_norm"].append(
            [float((captured[i].double().norm(dim=-1) * mask).sum() / mask.sum()) for i in range(4)]
        )
        for kind in KINDS:
            rows[kind].append([0.0] * 4)
        for i, pair in enumerate(base):
            for w in pair:
                g, w64 = w.grad.double(), w.detach().double()
                rows["grad_norm"][-1][i] += float(g.pow(2).sum().sqrt())
                rows["fisher"][-1][i] += float(g.pow(2).sum())
                rows["taylor"][-1][i] += float((w64 * g).abs().sum())
                w.grad = None
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    for h in handles:
        h.remove()
    return {k: np.array(v) for k, v in rows.items()}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("regime"), "bert")  # dropout 0.1, as saved


@pytest.fixture(scope="module")
def bert_no_dropout(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("regime_nd"), "bert", dropout=0.0)


@pytest.fixture(scope="module")
def hand_loop(bert, tiny_task, tmp_path_factory):
    return _hand_loop(_cfg(bert, tiny_task, tmp_path_factory.mktemp("hand")))


@pytest.mark.parametrize("scorer", ["activation_norm", *KINDS])
def test_training_regime_matches_a_hand_written_loop(bert, tiny_task, tmp_path, hand_loop, scorer):
    """Model dropout 0.1 and LoRA dropout 0.05 on: the same masks are drawn in the same order after the same
    seed, so the hand loop reproduces every step."""
    cfg = _cfg(bert, tiny_task, tmp_path / "run", scorer)
    doc = run_probe(cfg)
    expected = hand_loop[scorer]
    assert doc["regime"] == "training" and doc["batches_seen"] == 4
    np.testing.assert_allclose(doc["raw_per_batch"], expected, rtol=1e-5)
    np.testing.assert_allclose(doc["raw"], expected.mean(axis=0), rtol=1e-5)
    lo, hi = expected.mean(axis=0).min(), expected.mean(axis=0).max()
    np.testing.assert_allclose(doc["scores"], (expected.mean(axis=0) - lo) / (hi - lo), atol=1e-5)


@pytest.mark.parametrize("scorer", ["activation_norm", "grad_norm", "cka"])
def test_step_s_sees_the_weights_after_s_minus_1_updates(bert_no_dropout, tiny_task, tmp_path, scorer):
    """Without dropout (model and LoRA), step 1 runs the loaded weights (B = 0, the head's copy unchanged), so
    its reading is the inference regime's for the same batch; later steps run updated weights and differ."""
    runs = {
        regime: run_probe(_cfg(bert_no_dropout, tiny_task, tmp_path / regime, scorer, regime, dropout=0.0))
        for regime in ("inference", "training")
    }
    if scorer == "cka":  # one value over all examples: 1 step agrees, 4 do not
        one = {
            r: run_probe(
                _cfg(bert_no_dropout, tiny_task, tmp_path / f"{r}1", scorer, r, dropout=0.0).with_overrides(
                    {"probe.steps": 1}
                )
            )["raw"]
            for r in runs
        }
        assert one["training"][1:] == pytest.approx(one["inference"][1:], rel=1e-6)
        assert runs["training"]["raw"][1:] != pytest.approx(runs["inference"]["raw"][1:], rel=1e-4)
        return
    train, infer = (np.array(runs[r]["raw_per_batch"]) for r in ("training", "inference"))
    np.testing.assert_allclose(train[0], infer[0], rtol=1e-6)
    for s in range(1, 4):
        assert not np.allclose(train[s], infer[s], rtol=1e-4), s


def _snapshot(model):
    return {
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "params": {n: (p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()},
        "training": model.training,
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    }


def _same(before, after):
    assert after["modules"] == before["modules"]
    assert after["training"] == before["training"] and after["hooks"] == before["hooks"]
    assert list(after["params"]) == list(before["params"])
    for name, (value, flag, grad) in after["params"].items():
        assert torch.equal(value, before["params"][name][0]), name
        assert flag == before["params"][name][1] and grad is None, name


@pytest.mark.parametrize("scorer", ["activation_norm", "taylor"])
def test_training_regime_leaves_no_adapter_behind(bert, tiny_task, tmp_path, scorer):
    """The model probed in the training regime comes back as it went in: same modules (no LoRA layer, no
    head wrapper), same weights (the head's trained copy is dropped), same flags, no gradients, no hooks;
    an inference probe on it afterwards reads what it read before."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    cfg = _cfg(bert, tiny_task, tmp_path / "t", scorer)
    loaded = load_for(cfg.model, 2, CPU)
    before_doc = run_probe(
        cfg.with_overrides({"probe.regime": "inference", "output_dir": str(tmp_path / "a")}), loaded
    )
    before = _snapshot(loaded.model)
    run_probe(cfg, loaded)
    _same(before, _snapshot(loaded.model))
    assert not any(isinstance(m, BaseTunerLayer) for m in loaded.model.modules())
    assert not hasattr(loaded.model, "peft_config")
    after_doc = run_probe(
        cfg.with_overrides({"probe.regime": "inference", "output_dir": str(tmp_path / "b")}), loaded
    )
    assert after_doc["raw"] == before_doc["raw"]


def test_training_regime_restores_the_model_after_an_error(bert, tiny_task, tmp_path):
    cfg = _cfg(bert, tiny_task, tmp_path / "e", "grad_norm")
    loaded = load_for(cfg.model, 2, CPU)
    batches = _probe_batches(cfg, loaded.tokenizer)
    before = _snapshot(loaded.model)
    spec = task_spec(cfg.task)
    regime = Training(cfg, spec, encoded_split(loaded.tokenizer, cfg.task, spec, cfg.task.train_split))

    def failing():
        yield batches[0]
        raise RuntimeError("data went away")

    with pytest.raises(RuntimeError, match="data went away"):
        SCORERS["grad_norm"](loaded.model, loaded.arch, failing(), cfg, CPU, regime=regime)
    _same(before, _snapshot(loaded.model))


def test_weight_delta_refuses_the_training_regime(tmp_path):
    from pydantic import ValidationError

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValidationError, match="nothing to train on"):
        Config.model_validate(
            {"probe": {"scorer": "weight_delta", "adapter": str(tmp_path), "regime": "training"}}
        )


def test_the_python_api_refuses_the_training_regime():
    """layer_scores has no task to train on: it says so rather than probing in inference silently."""
    from actlora_cli.api import layer_scores

    with pytest.raises(ValueError, match="run_probe"):
        layer_scores(torch.nn.Linear(2, 2), [], regime="training")
