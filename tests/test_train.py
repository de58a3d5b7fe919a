"""Training: LoRA only where planned, the backward cut, exact resume, NaN stop, PEFT round trip, eval."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from actlora_cli import adapters, train
from actlora_cli.cli import app
from actlora_cli.config import Config, LoraSection, ModelSection, load_config
from actlora_cli.modeling import load_model, locate
from tests.conftest import NUM_LAYERS, grad_reach, poison_loss, tiny_config

HIDDEN = 32


def _cfg(tmp_path, tiny_models, tiny_task, family="bert", **sections) -> Config:
    return Config.model_validate(tiny_config(tiny_models[family], tiny_task, tmp_path / "run", **sections))


# --- where LoRA goes, and what it costs ------------------------------------------------------------------


@pytest.mark.parametrize("layers", [[2, 3], [0], [0, 1, 2, 3]])
def test_lora_only_on_planned_layers_with_exact_parameter_count(tiny_models, layers):
    model = load_model(ModelSection(name=str(tiny_models["bert"])), 2, torch.device("cpu"))
    arch = locate(model)
    wrapped = adapters.apply_lora(model, arch, LoraSection(), layers)
    assert adapters.adapted_layers(wrapped, arch) == layers
    trainable, _ = adapters.count_parameters(wrapped)
    # per layer: Q and V, each A (r x d) and B (d x r); plus the classifier head (d x 2 + 2)
    assert trainable == len(layers) * 2 * 2 * 8 * HIDDEN + (HIDDEN * 2 + 2)
    names = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "classifier" in n for n in names)


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "llama"])
@pytest.mark.parametrize("layers,lowest", [([2, 3], 2), ([0, 3], 0)])
def test_backward_stops_at_lowest_adapted_layer(tiny_models, family, layers, lowest):
    model = load_model(ModelSection(name=str(tiny_models[family])), 2, torch.device("cpu"))
    arch = locate(model)
    wrapped = adapters.apply_lora(model, arch, LoraSection(), layers)
    wrapped.train()
    calls, input_needs_grad, handles = grad_reach(wrapped, arch)
    ids = torch.randint(6, 20, (3, 9))
    out = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0])).backward()
    for h in handles:
        h.remove()
    assert calls == [0] * lowest + [1] * (NUM_LAYERS - lowest)
    # nothing below the lowest adapted layer is in the graph: not even its input needs a gradient
    assert input_needs_grad == [False] * (lowest + 1) + [True] * (NUM_LAYERS - lowest - 1)


def test_training_loop_keeps_the_backward_cut(tmp_path, tiny_models, tiny_task, monkeypatch):
    """The real loop (not only apply_lora): gradients never reach the layers below the plan."""
    seen = {}
    real_apply = adapters.apply_method

    def apply_and_watch(model, arch, lora, layers, total_steps):
        adapted = real_apply(model, arch, lora, layers, total_steps)
        seen["calls"], seen["inputs"], _ = grad_reach(adapted.model, arch)
        return adapted

    monkeypatch.setattr(train, "apply_method", apply_and_watch)
    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank={"layers": [2, 3]}, train={"max_steps": 3})
    train.run_train(cfg)
    assert seen["calls"][:2] == [0, 0] and all(c == 3 for c in seen["calls"][2:])


# --- the loop: logs, resume, NaN ---------------------------------------------------------------------


def _adapter_state(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_log_and_summary(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank={"k": "all"}, train={"epochs": 1})
    summary = train.run_train(cfg)
    log = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))  # 96 examples / batch 8
    assert all(r["forward_ms"] > 0 and r["backward_ms"] > 0 and r["optimizer_ms"] > 0 for r in log)
    assert summary["steps"] == 12 and summary["plan"]["layers"] == [0, 1, 2, 3]
    assert summary["trainable_parameters"] == 4 * 2 * 2 * 8 * HIDDEN + HIDDEN * 2 + 2
    assert list(summary["final_metrics"]["validation"]) == ["accuracy", "f1", "loss"]  # loss last
    # the lr each step ran with: warm-up (1 step of 12) reaching the peak once, then linear decay
    lrs = [r["lr"] for r in log]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(2e-4) and lrs.count(max(lrs)) == 1
    assert lrs[-1] == pytest.approx(2e-4 / 11)
    assert (cfg.run_dir / "checkpoints" / "step-12" / "adapter_model.safetensors").is_file()


def test_nan_stops_with_checkpoint_then_resume_matches_uninterrupted(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    sections = {"rank": {"k": "all"}, "train": {"epochs": 2, "save_every": 5}}
    full = _cfg(tmp_path / "a", tiny_models, tiny_task, **sections)
    train.run_train(full)

    broken = _cfg(tmp_path / "b", tiny_models, tiny_task, **sections)
    real_loss = poison_loss(monkeypatch, at_call=8)
    with pytest.raises(train.NonFiniteLoss) as info:
        train.run_train(broken)
    assert "step 8" in str(info.value) and "--resume" in str(info.value)
    state = torch.load(broken.run_dir / "checkpoints" / "last" / "state.pt", weights_only=False)
    assert state["step"] == 5  # the last good checkpoint

    monkeypatch.setattr(train, "compute_loss", real_loss)
    summary = train.run_train(broken, resume=True)
    assert summary["steps"] == 24
    a, b = _adapter_state(full.run_dir), _adapter_state(broken.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    log = [json.loads(x)["step"] for x in (broken.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 25))


def test_resume_without_checkpoint_exits_2(tmp_path, tiny_models, tiny_task):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run")))
    result = CliRunner().invoke(app, ["train", "-c", str(path), "--k", "all", "--resume"])
    assert result.exit_code == 2 and "no checkpoint" in result.output


# --- adapters round-trip through peft, and eval ------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "llama"])
def test_peft_loads_adapter_and_reproduces_eval_logits(tmp_path, tiny_models, tiny_task, family):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from actlora_cli import evaluation
    from actlora_cli.data import encode, load_examples, task_spec
    from actlora_cli.distributed import Dist

    sections = {"rank": {"layers": [1, 3]}, "train": {"epochs": 1, "lr": 5e-3}}
    cfg = _cfg(tmp_path, tiny_models, tiny_task, family, **sections)
    summary = train.run_train(cfg)

    # ours: eval's own loading path
    spec = task_spec(cfg.task)
    loaded, model = evaluation.load_trained(cfg, 2, Dist(0, 1, 0, torch.device("cpu")))
    data = encode(loaded.tokenizer, load_examples(cfg.task, spec, "validation"), 32, False)
    ours = evaluation.predict(model, data, 16, Dist(0, 1, 0, torch.device("cpu")))

    # independent: plain transformers + peft, the tokenizer's own padding, one example at a time
    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models[family], num_labels=2)
    reloaded = PeftModel.from_pretrained(base, str(cfg.run_dir / "adapter")).eval()
    texts = load_examples(cfg.task, spec, "validation").texts[0]
    with torch.no_grad():
        theirs = torch.cat(
            [reloaded(**tok(t, return_tensors="pt", truncation=True, max_length=32)).logits for t in texts]
        )
    torch.testing.assert_close(torch.from_numpy(ours), theirs, rtol=1e-4, atol=1e-5)
    assert adapters.adapted_layers(reloaded, locate(base)) == [1, 3]
    # the trained head came back too (not a fresh random classifier)
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_models[family], num_labels=2)
    head = locate(fresh).head_modules[-1]
    assert not torch.equal(
        fresh.get_submodule(head).weight,
        reloaded.base_model.model.get_submodule(head).modules_to_save["default"].weight,
    )

    doc = evaluation.run_eval(cfg, timing_batches=2)
    assert doc["metrics"]["validation"] == pytest.approx(summary["final_metrics"]["validation"], abs=1e-9)
    assert doc["timing"]["merged_metrics_match"]
    for mode in ("unmerged", "merged"):
        assert doc["timing"][mode]["latency_ms_p90"] >= doc["timing"][mode]["latency_ms_p50"] > 0
        assert doc["timing"][mode]["throughput_samples_per_s"] > 0
    assert json.loads((cfg.run_dir / "eval.json").read_text())["kind"] == "eval"
    # time to first token: a single request's latency (batch 1), encoders and decoders alike
    assert doc["timing"]["time_to_first_token_ms_p90"] >= doc["timing"]["time_to_first_token_ms_p50"] > 0


def test_eval_without_adapter_exits_2(tmp_path, tiny_models, tiny_task):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run")))
    result = CliRunner().invoke(app, ["eval", "-c", str(path)])
    assert result.exit_code == 2 and "actlora train" in result.output


@pytest.mark.slow
def test_minilm_learns_the_movie_task(tmp_path):
    """Real MiniLM, real movie sentences: a short Act-LoRA run learns well above chance."""
    cfg = load_config(
        "configs/minilm_movies.yaml",
        # 64 steps at lr 2e-3: 0.775 on this machine; 32 steps at 1e-3 stay at chance
        ["task.max_train_examples=2048", "task.max_eval_examples=512", "train.lr=2e-3", "train.epochs=1"],
        {"output_dir": str(tmp_path / "run"), "rank.k": "all"},
    )
    summary = train.run_train(cfg)
    assert summary["final_metrics"]["validation"]["accuracy"] > 0.7


def test_dropped_last_batch_still_ends_the_epoch(tmp_path, tiny_models, tiny_task):
    """95 examples, batch 8, grad_accum 2: the last batch (7 examples) is kept; 89: the last (1 example)
    cannot fill 2 micro-batches and is dropped, and the epoch is counted the same way (the loop used to
    spin)."""
    for n, steps in ((95, 12), (89, 11)):
        cfg = _cfg(
            tmp_path / str(n),
            tiny_models,
            tiny_task,
            rank={"k": "all"},
            task={"max_train_examples": n},
            train={"epochs": 2, "grad_accum": 2},
        )
        assert train.run_train(cfg)["steps"] == 2 * steps


def test_resume_refuses_a_checkpoint_of_another_plan(tmp_path, tiny_models, tiny_task):
    from actlora_cli.errors import ArtifactError

    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank={"k": "all"}, train={"max_steps": 3, "save_every": 2})
    train.run_train(cfg)
    cfg.run_dir.joinpath("selection.json").unlink(missing_ok=True)
    other = _cfg(tmp_path, tiny_models, tiny_task, rank={"layers": [2, 3]}, train={"max_steps": 3})
    with pytest.raises(ArtifactError, match=r"plan \[0, 1, 2, 3\] -> \[2, 3\]"):
        train.run_train(other, resume=True)


def test_fresh_run_clears_old_checkpoints(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank={"k": "all"}, train={"epochs": 1})
    train.run_train(cfg)
    stale = cfg.run_dir / "checkpoints" / "step-999"
    stale.mkdir()
    train.run_train(cfg, overwrite=True)
    assert not stale.exists()


def test_stale_selection_is_refused(tmp_path, tiny_models, tiny_task):
    from actlora_cli.errors import ArtifactError
    from actlora_cli.probe import run_probe
    from actlora_cli.rank import run_rank

    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank={"k": 2}, train={"max_steps": 1})
    run_probe(cfg)
    run_rank(cfg)
    run_probe(Config.model_validate({**cfg.to_dict(), "probe": {**cfg.probe.model_dump(), "seed": 7}}))
    with pytest.raises(ArtifactError, match="re-run `actlora rank`"):
        train.run_train(cfg)


def test_fp32_training_on_a_bf16_model_is_refused(tmp_path, tiny_models, tiny_task):
    from actlora_cli.errors import ConfigError

    cfg = _cfg(
        tmp_path,
        tiny_models,
        tiny_task,
        model={"dtype": "bfloat16"},
        rank={"k": "all"},
        train={"max_steps": 1, "precision": "fp32"},
    )
    with pytest.raises(ConfigError, match="train.precision"):
        train.run_train(cfg)


def test_cost_account_device_hours_are_the_timed_phases(tmp_path, tiny_models, tiny_task):
    """device_hours = (forward + backward + optimizer of every logged step) x world / 3600, worked from the
    log; evaluation, checkpoints, loading and data preparation are accounted apart, inside the loop's time."""
    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank={"k": "all"}, train={"epochs": 2, "save_every": 5})
    summary = train.run_train(cfg)
    log = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    step_seconds = sum(r["forward_ms"] + r["backward_ms"] + r["optimizer_ms"] for r in log) / 1000
    cost = summary["cost"]
    assert cost["step_seconds"] == pytest.approx(step_seconds, abs=0.01)
    assert summary["device_hours"] == pytest.approx(cost["step_seconds"] / 3600, abs=1e-6)
    assert all(cost[k] > 0 for k in ("eval_seconds", "checkpoint_seconds", "load_seconds", "data_seconds"))
    inside_loop = cost["step_seconds"] + cost["eval_seconds"] + cost["checkpoint_seconds"]
    assert inside_loop <= cost["loop_seconds"] + 0.01 and cost["loop_seconds"] == summary["train_seconds"]
    host = summary["host"]
    assert host["cpu_count"] >= 1 and 0.0 <= host["others_cpu_share"] <= 1.0


@pytest.mark.parametrize("name", ["linear", "cosine", "constant_with_warmup"])
def test_scheduler_shapes_by_hand(name):
    """train.scheduler over 12 steps with 2 of warm-up at peak 1.0: the rate each step runs with."""
    import math

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = train.make_scheduler(name, optimizer, total_steps=12, warmup_steps=2)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if name == "linear":  # ours: (s + 1) / 3 during warm-up, then (12 - s) / 10
        expected = [1 / 3, 2 / 3] + [(12 - s) / 10 for s in range(2, 12)]
    elif name == "cosine":  # transformers: s / 2 during warm-up, then half a cosine over the 10 steps left
        expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 10)) for s in range(2, 12)]
    else:
        expected = [0.0, 0.5] + [1.0] * 10
    assert lrs == pytest.approx(expected)


def test_eval_steps_patience_and_save_total_limit(tmp_path, tiny_models, tiny_task, monkeypatch):
    """Evaluations every 2 steps; a metric that never improves after the first stops the run after
    patience=2 more evaluations, with a checkpoint there; at most 2 step copies are kept."""
    values = iter([0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])

    def fake_metrics(names, logits, labels, regression):
        return {"accuracy": next(values), "loss": 0.1}

    monkeypatch.setattr(train, "compute_metrics", fake_metrics)
    sections = {"k": "all"}
    settings = {"epochs": 1, "eval_steps": 2, "patience": 2, "save_total_limit": 2}
    cfg = _cfg(tmp_path, tiny_models, tiny_task, rank=sections, train=settings)
    summary = train.run_train(cfg)
    # evaluations at steps 2 (0.9, the best), 4 and 6 (no better): stopped at 6 of 12
    assert [h["step"] for h in summary["history"]] == [2, 4, 6]
    assert summary["steps"] == 6 and summary["stopped_early"]["step"] == 6
    assert summary["best"] == {"step": 2, "metric": "validation accuracy", "value": 0.9}
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("step-*")) == ["step-6"]
    log = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and (cfg.run_dir / "predictions.json").is_file()


def test_save_total_limit_keeps_the_newest_step_copies(tmp_path, tiny_models, tiny_task):
    cfg = _cfg(
        tmp_path, tiny_models, tiny_task, rank={"k": "all"}, train={"epochs": 3, "save_total_limit": 2}
    )
    summary = train.run_train(cfg)
    # epoch ends at steps 12, 24, 36: the two newest copies stay, and the best evaluation's if it is older
    kept = {"step-24", "step-36", f"step-{summary['best']['step']}"}
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("step-*")) == sorted(kept)
