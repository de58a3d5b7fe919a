"""The baseline methods in the same harness: each trains and evaluates on a tiny model, on every layer and on
a plan; parameter counts are hand-worked; saved weights reload (plain transformers + peft) to the logits of
the model the loop trained; AdaLoRA's schedule, budget, regulariser and resume are checked against peft
itself."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from actlora_cli import adapters, train
from actlora_cli.cli import app
from actlora_cli.config import METHODS, Config, LoraSection, ModelSection
from actlora_cli.distributed import Dist
from actlora_cli.modeling import load_model, locate
from tests.conftest import NUM_LAYERS, grad_reach, poison_loss, tiny_config

H, FF, R, HEAD = 32, 64, 8, 32 * 2 + 2  # tiny BERT: hidden, intermediate, LoRA rank, classifier weights


def _expected_trainable(method: str, n_layers: int) -> int | None:
    """Hand-worked trainable parameters of tiny BERT with Q and V targeted (peft's defaults for IA3)."""
    per_layer = {
        "lora": 2 * (R * H + H * R),  # A (r x d) and B (d x r), for Q and V
        "adalora": 2 * (12 * H + H * 12 + 12),  # P, Q at init_r 12, and the 12 singular values E
        # key and value: a vector over outputs; attention.output.dense and output.dense both end in
        # "output.dense", peft's feed-forward name for BERT: a vector over their inputs (32 and 64)
        "ia3": H + H + H + FF,
        "vera": 2
        * (H + 256),  # lambda_b (d) and lambda_d (r=256) per target; the projections are frozen buffers
        "loha": 2 * 2 * (H * R + R * H),  # two Hadamard factors, each a rank-r pair
        # LoKr: 32 = 4 x 8 on both sides, W = w1 (4 x 4) kron w2 (8 x 8); r=8 is at least half of 8, so peft
        # keeps w2 whole rather than as a rank-r pair
        "lokr": 2 * (4 * 4 + 8 * 8),
    }
    return per_layer[method] * n_layers + HEAD if method in per_layer else None


def _train_capturing(cfg: Config, monkeypatch) -> tuple[dict, adapters.Adapted]:
    """run_train, keeping the Adapted it trained (to compare the saved weights with the live model)."""
    seen = {}
    real = adapters.apply_method

    def keep(*args, **kwargs):
        seen["adapted"] = real(*args, **kwargs)
        return seen["adapted"]

    monkeypatch.setattr(train, "apply_method", keep)
    return train.run_train(cfg), seen["adapted"]


def _independent_reload(cfg: Config, model_dir):
    """The trained model as a user would load it: plain transformers (+ peft for adapters)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    if cfg.lora.method == "full":
        return AutoModelForSequenceClassification.from_pretrained(cfg.run_dir / "model").eval()
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    return PeftModel.from_pretrained(base, str(cfg.run_dir / "adapter")).eval()


@pytest.mark.parametrize("layers", [None, [1, 3]], ids=["all-layers", "plan-1-3"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_evaluates_and_reloads(
    tmp_path, tiny_models, tiny_task, monkeypatch, method, layers
):
    from transformers import AutoTokenizer

    from actlora_cli import evaluation
    from actlora_cli.data import load_examples, task_spec

    rank = {"k": "all"} if layers is None else {"layers": layers}
    cfg = Config.model_validate(
        tiny_config(
            tiny_models["bert"],
            tiny_task,
            tmp_path / "run",
            lora={"method": method},
            rank=rank,
            train={"epochs": 1, "lr": 5e-3},
        )
    )
    planned = layers or list(range(NUM_LAYERS))
    summary, adapted = _train_capturing(cfg, monkeypatch)
    assert summary["method"] == method and summary["plan"]["layers"] == planned
    assert (
        adapters.adapted_layers(
            adapted.model,
            locate(load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))),
        )
        == planned
    )
    expected = _expected_trainable(method, len(planned))
    if expected is not None:
        assert summary["trainable_parameters"] == expected
    if method == "full":
        # counted on a fresh copy of the model, not on what the loop counted
        fresh = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
        blocks = sum(p.numel() for n, p in fresh.named_parameters() if ".layer.1." in n)
        everything = sum(p.numel() for p in fresh.parameters())
        assert summary["trainable_parameters"] == (
            everything if layers is None else len(planned) * blocks + HEAD
        )

    # the saved weights, reloaded by plain transformers/peft and fed one example at a time, give the logits of
    # the model the loop trained (training really changed it: not a fresh head or untouched adapters)
    spec = task_spec(cfg.task)
    texts = load_examples(cfg.task, spec, "validation").texts[0][:12]
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    reloaded = _independent_reload(cfg, tiny_models["bert"])
    adapted.model.eval()
    with torch.no_grad():
        inputs = [tok(t, return_tensors="pt", truncation=True, max_length=32) for t in texts]
        theirs = torch.cat([reloaded(**x).logits for x in inputs])
        live = torch.cat([adapted.model(**x).logits for x in inputs])
        untrained = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
        before = torch.cat([untrained(**x).logits for x in inputs])
    torch.testing.assert_close(theirs, live, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(theirs, before, atol=1e-4)

    doc = evaluation.run_eval(cfg, timing_batches=2)
    assert doc["metrics"]["validation"] == pytest.approx(summary["final_metrics"]["validation"], abs=1e-9)
    ours = evaluation.load_trained(cfg, 2, Dist(0, 1, 0, torch.device("cpu")))[1]
    with torch.no_grad():
        torch.testing.assert_close(
            torch.cat([ours(**x).logits for x in inputs]), theirs, rtol=1e-4, atol=1e-5
        )
    if method == "full":
        assert "skipped" in doc["timing"]["merged"]
    else:
        assert doc["timing"]["merged_metrics_match"]


@pytest.mark.parametrize("method", ["ia3", "vera", "full", "adalora"])
def test_backward_stops_below_the_plan_for_every_method(tiny_models, method):
    model = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
    arch = locate(model)
    adapted = adapters.apply_method(model, arch, LoraSection(method=method), [2, 3], total_steps=10)
    adapted.model.train()
    calls, input_needs_grad, handles = grad_reach(adapted.model, arch)
    ids = torch.randint(6, 20, (3, 9))
    out = adapted.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    F.cross_entropy(out, torch.tensor([0, 1, 0])).backward()
    for h in handles:
        h.remove()
    assert calls == [0, 0, 1, 1]
    assert input_needs_grad == [False, False, False, True]
    trained = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert all(".layer.2." in n or ".layer.3." in n or "classifier" in n for n in trained)


def test_ia3_on_a_plan_rescales_exactly_peft_default_modules_of_those_layers(tiny_models):
    from peft.tuners.ia3 import IA3Layer

    model = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
    arch = locate(model)
    adapted = adapters.apply_method(model, arch, LoraSection(method="ia3"), [1, 3])
    got = {
        n.removeprefix("base_model.model."): m.is_feedforward
        for n, m in adapted.model.named_modules()
        if isinstance(m, IA3Layer)
    }
    want = {}
    for i in (1, 3):
        base = f"bert.encoder.layer.{i}."
        want |= {
            base + "attention.self.key": False,
            base + "attention.self.value": False,
            base + "attention.output.dense": True,
            base + "output.dense": True,
        }
    assert got == want


# --- AdaLoRA against peft -----------------------------------------------------------------------------------


def _adalora_cfg(tmp_path, tiny_models, tiny_task, **train_section) -> Config:
    return Config.model_validate(
        tiny_config(
            tiny_models["bert"],
            tiny_task,
            tmp_path / "run",
            lora={"method": "adalora"},
            rank={"k": "all"},
            train={"epochs": 2, "lr": 5e-3, **train_section},
        )
    )


def test_adalora_schedule_scaled_to_the_run_and_reallocated_every_step(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    from peft.tuners.adalora import AdaLoraModel

    steps_seen = []
    real = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        # peft needs the gradients here: called after optimizer.step, before zero_grad
        assert any(p.grad is not None for p in self.model.parameters() if p.requires_grad)
        steps_seen.append(global_step)
        return real(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    cfg = _adalora_cfg(tmp_path, tiny_models, tiny_task)
    summary = train.run_train(cfg)
    total = summary["steps"]
    assert total == 24 and steps_seen == list(range(total))
    # the orthogonality term is logged beside the task loss, not folded into it
    log = [json.loads(x) for x in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert all(r["regularizer"] > 0 for r in log)
    saved = json.loads((cfg.run_dir / "adapter" / "adapter_config.json").read_text())
    # shares of the run (defaults 0.1 / 0.3 / 0.01) in steps
    assert (saved["tinit"], saved["tfinal"], saved["deltaT"], saved["total_step"]) == (2, 7, 1, 24)
    assert (saved["init_r"], saved["target_r"]) == (12, 8)
    # the final budget: target_r per adapted matrix on average (8 matrices: Q and V of 4 layers)
    kept = sum(sum(mask) for mask in saved["rank_pattern"].values())
    assert len(saved["rank_pattern"]) == 8 and kept == 8 * 8
    assert any(sum(mask) != 8 for mask in saved["rank_pattern"].values())  # reallocated, not uniform


def test_adalora_orthogonality_matches_the_term_peft_adds_with_labels(tiny_models):
    model = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
    adapted = adapters.apply_method(
        model, locate(model), LoraSection(method="adalora"), [0, 1, 2, 3], total_steps=50
    )
    with torch.no_grad():
        for n, p in adapted.model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)  # away from init, so the penalty is not trivially small
    adapted.model.eval()
    ids = torch.randint(6, 20, (4, 7))
    labels = torch.tensor([0, 1, 1, 0])
    # AdaLoraModel.forward adds the term when labels are given (a PeftModel without task_type skips it: one
    # more reason the loop adds it itself)
    out = adapted.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    peft_term = out.loss - F.cross_entropy(out.logits, labels)
    ours = adapted.regularizer()
    assert float(ours) > 0.1
    torch.testing.assert_close(ours, peft_term, rtol=1e-5, atol=1e-6)


def test_adalora_resume_after_nan_matches_uninterrupted(tmp_path, tiny_models, tiny_task, monkeypatch):
    from safetensors.torch import load_file

    full = _adalora_cfg(tmp_path / "a", tiny_models, tiny_task, save_every=5)
    train.run_train(full)
    broken = _adalora_cfg(tmp_path / "b", tiny_models, tiny_task, save_every=5)
    real_loss = poison_loss(monkeypatch, at_call=13)
    with pytest.raises(train.NonFiniteLoss):
        train.run_train(broken)
    monkeypatch.setattr(train, "compute_loss", real_loss)
    train.run_train(
        broken, resume=True
    )  # resumes at step 10: inside the pruning phase, importance state needed
    a = load_file(str(full.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(broken.run_dir / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)

    def pattern(run):
        return json.loads((run / "adapter" / "adapter_config.json").read_text())["rank_pattern"]

    assert pattern(broken.run_dir) == pattern(full.run_dir)


# --- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lokr", "loha"])
def test_methods_that_cannot_train_on_a_4bit_base_exit_2(tmp_path, tiny_models, tiny_task, method):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            tiny_config(
                tiny_models["bert"],
                tiny_task,
                tmp_path / "run",
                model={"quantization": "nf4"},
                lora={"method": method},
            )
        )
    )
    result = CliRunner().invoke(app, ["train", "-c", str(path), "--k", "all"])
    assert result.exit_code == 2 and f"lora.method={method}" in result.output
    assert not (tmp_path / "run").exists()


def test_eval_with_another_method_than_trained_exits_2(tmp_path, tiny_models, tiny_task):
    path = tmp_path / "cfg.yaml"
    data = tiny_config(
        tiny_models["bert"], tiny_task, tmp_path / "run", lora={"method": "ia3"}, train={"max_steps": 1}
    )
    path.write_text(yaml.safe_dump(data))
    assert CliRunner().invoke(app, ["train", "-c", str(path), "--k", "all"]).exit_code == 0
    result = CliRunner().invoke(app, ["eval", "-c", str(path), "--set", "lora.method=vera"])
    assert result.exit_code == 2 and "lora.method=ia3" in result.output


def test_ablation_refuses_a_run_of_another_method(tmp_path, tiny_models, tiny_task):
    from actlora_cli.ablation import run_ablation
    from actlora_cli.errors import ArtifactError

    cfg = Config.model_validate(
        tiny_config(
            tiny_models["bert"],
            tiny_task,
            tmp_path / "run",
            lora={"method": "vera"},
            rank={"k": "all"},
            train={"max_steps": 1},
        )
    )
    train.run_train(cfg)
    with pytest.raises(ArtifactError, match="not LoRA"):
        run_ablation(cfg)


def test_adalora_with_accumulation_equals_one_big_batch(tmp_path, tiny_task):
    """The orthogonality term is added once per optimizer step whatever the micro-batching (a share per
    micro-batch), and the reallocation runs once per step: grad_accum 2 gives the adapter of grad_accum 1 with
    the same global batch (no dropout anywhere, so the two see identical computations)."""
    from safetensors.torch import load_file

    from tests.conftest import make_tiny_model

    model = make_tiny_model(tmp_path, "bert", dropout=0.0)
    weights = []
    for accum in (1, 2):
        cfg = Config.model_validate(
            tiny_config(
                model,
                tiny_task,
                tmp_path / f"run{accum}",
                lora={"method": "adalora", "dropout": 0.0},
                rank={"k": "all"},
                train={"epochs": 2, "lr": 5e-3, "grad_accum": accum},
            )
        )
        train.run_train(cfg)
        weights.append(load_file(str(cfg.run_dir / "adapter" / "adapter_model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5)


def test_adalora_budget_is_always_finalised(tiny_models):
    """tfinal = 0 would never reach peft's finalising step (step total - tfinal is past the last step)."""
    model = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
    lora = LoraSection(method="adalora", adalora={"tfinal": 0.0})
    config, settings = adapters.peft_config(locate(model), lora, [0, 1, 2, 3], total_steps=20)
    assert settings["tfinal"] == 1 and config.tinit < 20 - config.tfinal
