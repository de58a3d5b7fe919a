"""The cost model and selection within a budget: hand-worked predictions, a budget that only a non-top-k plan
fits, the polynomial search against enumerating every subset, and profile -> rank --budget -> train (with
predicted against measured step time) end to end on a tiny model."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from actlora_cli.costmodel import CostModel, RunShape, predict, within_budget
from tests.conftest import tiny_config

runner = CliRunner()

# step seconds of {0}, {1}, {2}, {3}; every layer; time to each layer's input
HAND = CostModel(lowest=[10.0, 8.0, 6.0, 4.0], every=13.0, prefix=[1.0, 2.0, 3.0, 4.0])


def test_hand_worked_prediction():
    assert HAND.adapter == pytest.approx(1.0)  # (13 - 10) / 3
    assert HAND.step_seconds([1, 3]) == pytest.approx(9.0)  # 8 + one more layer
    assert HAND.step_seconds([1, 3], cached=True) == pytest.approx(8.0)  # skips layer 0: 2 - 1
    assert HAND.step_seconds([0, 1, 2, 3]) == pytest.approx(13.0)  # the model reproduces its input
    # 10 steps, 4 per epoch, cached: 4 at 9 s, 6 at 8 s
    shape = RunShape(total_steps=10, steps_per_epoch=4, prefix_cache=True, world=2)
    p = predict(HAND, [1, 3], shape)
    assert p["step_seconds_total"] == pytest.approx(84.0)
    assert p["mean_step_seconds"] == pytest.approx(8.4)
    assert p["device_hours"] == pytest.approx(84.0 * 2 / 3600, abs=1e-6)
    uncached = predict(HAND, [1, 3], RunShape(10, 4, prefix_cache=False))
    assert uncached["step_seconds_total"] == pytest.approx(90.0) and uncached["cached_step_seconds"] is None


def test_noise_never_makes_a_layer_free_or_negative():
    noisy = CostModel(lowest=[10.0, 9.0], every=9.5, prefix=[0.0, 1.0])
    assert noisy.adapter == 0.0


def test_a_budget_only_a_non_top_k_plan_fits():
    scores = [1.0, 0.9, 0.1, 0.0]
    one = RunShape(total_steps=1, steps_per_epoch=1, prefix_cache=False)
    # top-2 = {0, 1} costs 11; with lowest layer 1 at least 9; only {2, 3} (6 + 1 = 7) fits 8
    for search in ("exact", "lowest-layer"):
        layers, seconds, used = within_budget(HAND, scores, one, limit_seconds=8.0, k=2, search=search)
        assert (layers, seconds, used) == ([2, 3], pytest.approx(7.0), search)
    # a larger budget gives the top-2 back
    assert within_budget(HAND, scores, one, 11.0, k=2)[0] == [0, 1]
    # any size within 9.5: lowest layer 1 (8) plus one more (9): {1, 2} beats {2, 3} and {1}
    assert within_budget(HAND, scores, one, 9.5)[0] == [1, 2]
    # nothing fits below the cheapest plan of that size
    assert within_budget(HAND, scores, one, 4.5, k=2) is None
    assert within_budget(HAND, scores, one, 4.0, k=1)[0] == [3]


def _brute(model, scores, shape, limit, k):
    """Every subset, its cost from the model directly: the reference."""
    best = None
    for size in [k] if k else range(1, len(scores) + 1):
        for layers in itertools.combinations(range(len(scores)), size):
            if predict(model, list(layers), shape)["step_seconds_total"] <= limit + 1e-9:
                total = sum(scores[i] for i in layers)
                if best is None or total > best[0] + 1e-12:
                    best = (total, layers)
    return best


def test_polynomial_search_matches_every_subset():
    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(2, 9)
        lowest = sorted((rng.uniform(1, 10) for _ in range(n)), reverse=True)
        prefix = sorted(rng.uniform(0, 1) for _ in range(n))
        model = CostModel(lowest, lowest[0] + rng.uniform(0, 5), prefix)
        scores = [rng.random() for _ in range(n)]
        shape = RunShape(rng.randint(1, 20), rng.randint(1, 8), rng.random() < 0.5)
        k = rng.choice([None, rng.randint(1, n)])
        limit = rng.uniform(0.5, 1.2) * predict(model, list(range(n)), shape)["step_seconds_total"]
        ref = _brute(model, scores, shape, limit, k)
        for search in ("exact", "lowest-layer"):
            got = within_budget(model, scores, shape, limit, k, search=search)
            if ref is None:
                assert got is None, (trial, search)
            else:
                assert got is not None, (trial, search)
                assert sum(scores[i] for i in got[0]) == pytest.approx(ref[0]), (trial, search)
                assert got[1] <= limit + 1e-9


def test_large_models_use_the_polynomial_search():
    n = 32
    model = CostModel([float(n - m) for m in range(n)], float(n + 5), [0.1 * m for m in range(n)])
    scores = [((7 * i) % 11) / 10 for i in range(n)]
    one = RunShape(1, 1, False)
    layers, _, search = within_budget(model, scores, one, limit_seconds=20.0, k=4)
    assert search == "lowest-layer" and len(layers) == 4 and min(layers) >= 14  # step[m] + 3 <= 20


# --- end to end -----------------------------------------------------------------------------------------


def _invoke(*args):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_profile_rank_budget_train_end_to_end(tmp_path, six_layer_bert, tiny_task):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    sections = {"train": {"epochs": 2, "batch_size": 16}, "probe": {"steps": 3}, "rank": {"k": 2}}
    cfg.write_text(yaml.safe_dump(tiny_config(six_layer_bert, tiny_task, run, **sections)))
    result, text = _invoke("profile", "-c", str(cfg), "--batches", "2", "--rounds", "2")
    assert result.exit_code == 0, text
    costs = json.loads((run / "costs.json").read_text())
    assert len(costs["step_seconds"]["lowest"]) == 6 and costs["steps_per_epoch"] == 6  # 96 examples / 16
    assert costs["batches"] == 2 and costs["rounds"] == 2
    # the time to a layer's input grows with its depth
    assert costs["prefix_forward_seconds"][5] > costs["prefix_forward_seconds"][0]

    # rank --budget needs scores (a probe) and costs
    assert _invoke("probe", "-c", str(cfg))[0].exit_code == 0
    result, text = _invoke("rank", "-c", str(cfg), "--budget", "1.0")
    assert result.exit_code == 0, text
    sel = json.loads((run / "selection.json").read_text())
    top2 = sorted(sel["ranking"][:2])
    assert sel["rule"] == "budget" and sel["k"] == 2
    assert sel["layers"] == top2  # the whole budget: the top-2 fits (every layer's cost >= any 2-plan's)
    assert sel["budget"]["search"] == "exact" and sel["budget"]["fraction"] == 1.0

    model = CostModel.from_doc(costs)
    shape = RunShape(12, 6, True)
    every = predict(model, list(range(6)), shape)["device_hours"]
    cheapest = predict(model, [4, 5], shape)["device_hours"]
    too_small = 0.5 * cheapest / every
    result, text = _invoke("rank", "-c", str(cfg), "--budget", f"{too_small:.6f}")
    assert result.exit_code == 2 and "rank.budget" in text and "no plan of 2" in text, text

    # train on the budget plan: the summary reports predicted against measured step time
    result, text = _invoke("train", "-c", str(cfg), "--overwrite")
    assert result.exit_code == 0, text
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["plan"]["layers"] == top2 and summary["plan"]["rule"] == "budget"
    pred = summary["prediction"]
    expected = predict(model, top2, RunShape(12, 6, summary["frozen_prefix"]["cache_store"] != "off"))
    assert pred["mean_step_seconds"] == pytest.approx(expected["mean_step_seconds"], rel=1e-4)
    measured = summary["cost"]["step_seconds"] / summary["steps"]
    assert pred["measured_mean_step_seconds"] == pytest.approx(measured, rel=1e-2)
    assert pred["measured_over_predicted"] > 0


def test_prediction_is_skipped_under_other_settings(tmp_path, six_layer_bert, tiny_task):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(six_layer_bert, tiny_task, run, train={"epochs": 1})))
    assert _invoke("profile", "-c", str(cfg), "--batches", "1", "--rounds", "1")[0].exit_code == 0
    result, text = _invoke("train", "-c", str(cfg), "--k", "all", "--set", "train.batch_size=4")
    assert result.exit_code == 0, text
    pred = json.loads((run / "train_summary.json").read_text())["prediction"]
    assert "train.batch_size" in pred["skipped"]


def test_budget_needs_costs(tmp_path, six_layer_bert, tiny_task):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(six_layer_bert, tiny_task, run, probe={"steps": 2})))
    assert _invoke("probe", "-c", str(cfg))[0].exit_code == 0
    result, text = _invoke("rank", "-c", str(cfg), "--budget", "0.5")
    assert result.exit_code == 2 and "costs.json" in text and "actlora profile" in text, text
    assert not (run / "selection.json").exists()


def test_budget_conflicts_are_config_errors(tmp_path, six_layer_bert, tiny_task):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(six_layer_bert, tiny_task, tmp_path / "run")))
    result, text = _invoke("rank", "-c", str(cfg), "--budget", "0.5", "--budget-hours", "1")
    assert result.exit_code == 2 and "not both" in text
    result, text = _invoke("rank", "-c", str(cfg), "--budget", "0.5", "--strategy", "last", "--k", "2")
    assert result.exit_code == 2 and "rank.strategy=scores" in text
    result, text = _invoke("rank", "-c", str(cfg), "--budget", "1.5")
    assert result.exit_code == 2 and "budget" in text


def test_profile_batches_are_slice_midpoints():
    from actlora_cli.profile import spread_batches

    # 10 one-row batches of lengths 1..10 (shuffled): 5 slices of 2; position int((q + 0.5) x 2) of each
    lengths = [7, 2, 9, 1, 4, 10, 3, 6, 8, 5]
    batches = [[i] for i in range(10)]
    chosen = spread_batches(batches, lengths, 5)
    assert [lengths[b[0]] for b in chosen] == [2, 4, 6, 8, 10]
    assert spread_batches(batches, lengths, 20) == sorted(batches, key=lambda b: lengths[b[0]])


def test_budget_search_refuses_an_impossible_k():
    one = RunShape(1, 1, False)
    for k in (0, 5):
        with pytest.raises(ValueError, match="a plan has 1..4 layers"):
            within_budget(HAND, [0.1, 0.2, 0.3, 0.4], one, 100.0, k=k)
