"""The frontier study: its statistics against hand-worked and independent computations, and the study end to
end on a tiny model (every distinct plan trained once per seed, reports written, numbers consistent with the
run folders)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actlora_cli.analysis import frontier_stats as fs
from actlora_cli.config import Config
from actlora_cli.costmodel import CostModel, RunShape
from actlora_cli.frontier import plan_table, run_frontier
from tests.conftest import tiny_config


def test_paired_difference_mean_and_interval():
    rng = np.random.default_rng(1)
    a = [rng.integers(0, 2, 500) for _ in range(3)]
    b = [np.where(rng.random(500) < 0.1, 1 - x, x) for x in a]  # b flips 10 % of a's answers
    d = fs.paired_difference(a, b, reps=500)
    by_hand = np.mean([x.mean() - y.mean() for x, y in zip(a, b, strict=True)])
    assert d["difference"] == pytest.approx(by_hand)
    assert d["low"] <= d["difference"] <= d["high"]
    assert d["per_seed"] == pytest.approx([x.mean() - y.mean() for x, y in zip(a, b, strict=True)])
    same = fs.paired_difference(a, a, reps=200)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    # a plan right on every example another gets wrong: the whole interval is above zero
    always = fs.paired_difference([np.ones(100)] * 2, [np.zeros(100)] * 2, reps=100)
    assert always["low"] == always["high"] == 1.0
    with pytest.raises(ValueError):
        fs.paired_difference([np.ones(3)], [np.ones(4)])


def test_percentile_and_pareto_by_hand():
    assert fs.percentile_among(0.8, [0.7, 0.8, 0.9, 0.6]) == pytest.approx(62.5)  # 2 below, 1 tie
    assert fs.percentile_among(1.0, []) is None
    # (cost, metric): (1, .5) and (2, .7) and (4, .8) are the front; (3, .6) is dominated by (2, .7)
    assert fs.pareto_front([2, 1, 4, 3], [0.7, 0.5, 0.8, 0.6]) == [1, 0, 2]
    assert fs.buckets([5, 1, 3, 2, 4, 6], 3) == [2, 0, 1, 0, 1, 2]


def test_plan_table_deduplicates_and_labels():
    scores = [0.1, 1.0, 0.2, 0.9, 0.0, 0.8]
    model = CostModel([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 8.5, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    plans = plan_table(scores, model, RunShape(10, 5, False), [3, 6], draws=2, budget=0.5)
    guided = (1, 3, 5)
    assert guided in plans and {"k": 3, "strategy": "scores", "draw": None} in plans[guided]
    # uniform over 6 layers at k=3 is the centres 1, 3, 5: the guided plan itself, trained once
    assert {"k": 3, "strategy": "uniform", "draw": None} in plans[guided]
    assert (3, 4, 5) in plans and (0, 1, 2) in plans and tuple(range(6)) in plans
    # budget 0.5 of every layer's 8.5 s: lowest layer >= 3 with 3 layers (3 + 2 x 0.5 = 4 <= 4.25)
    budget_plan = next(
        layers for layers, labels in plans.items() if any(x["strategy"] == "budget" for x in labels)
    )
    assert budget_plan == (3, 4, 5)
    assert (
        sum(len(v) for v in plans.values()) == 3 + 1 + 2 + 1 + 1
    )  # guided, budget, last/first/uniform, 2 draws, all
    # --strategies last: the guided plan, the last 3 and every layer, nothing else
    narrow = plan_table(scores, model, RunShape(10, 5, False), [3], draws=2, budget=0.5, strategies=("last",))
    assert {layers: [x["strategy"] for x in labels] for layers, labels in narrow.items()} == {
        guided: ["scores"],
        (3, 4, 5): ["last"],
        tuple(range(6)): ["all"],
    }


def test_epoch_step_seconds_by_hand(tmp_path):
    from actlora_cli.frontier import epoch_cost_table, epoch_step_seconds

    log = tmp_path / "train_log.jsonl"
    rows = [(1, 100, 50, 10), (2, 120, 50, 10), (3, 20, 5, 1), (4, 30, 5, 1)]  # 2 steps per epoch
    keys = ("step", "forward_ms", "backward_ms", "optimizer_ms")
    log.write_text("".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in rows))
    got = epoch_step_seconds(log, 2.0)
    assert got["first_epoch"] == pytest.approx((0.160 + 0.180) / 2)
    assert got["later_epochs"] == pytest.approx((0.026 + 0.036) / 2)
    points = [
        {
            "layers": [0, 1],
            "strategies": ["all"],
            "first_epoch_step_seconds": 0.2,
            "later_epochs_step_seconds": 0.2,
        },
        {
            "layers": [1],
            "strategies": ["last"],
            "first_epoch_step_seconds": 0.1,
            "later_epochs_step_seconds": 0.05,
        },
    ]
    table = "\n".join(epoch_cost_table({"points": points}))
    assert "| [1] | 0.100 | 0.050 | 0.250 |" in table and "| [0, 1] | 0.200 | 0.200 | 1.000 |" in table


def test_frontier_refuses_an_unknown_strategy_and_a_budget_without_profile(tmp_path):
    from actlora_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="--strategies"):
        run_frontier(Config(), tmp_path, strategies=("last", "best"))
    with pytest.raises(ConfigError, match="budget needs the cost profile"):
        run_frontier(Config(), tmp_path, strategies=("budget",), profile=False)


def test_frontier_without_profile_narrowed(tmp_path, six_layer_bert, tiny_task):
    """--no-profile --strategies last --eval-examples: the guided plan, the last k and every layer only, no
    costs.json, no predictions, evaluated on the first N validation examples."""
    train = {"epochs": 1, "lr": 5e-3, "batch_size": 16, "max_steps": 2}
    cfg = Config.model_validate(
        tiny_config(
            six_layer_bert, tiny_task, tmp_path / "unused", train=train, probe={"steps": 2}, rank={"k": 2}
        )
    )
    out = tmp_path / "frontier"
    payload = run_frontier(
        cfg,
        out,
        ks=[2],
        seeds=(0,),
        protocol_check=False,
        strategies=("last",),
        eval_examples=10,
        profile=False,
    )
    assert not (out / "probe" / "costs.json").exists()
    chosen = {tuple(p["layers"]): p["strategies"] for p in payload["points"]}
    guided = tuple(payload["per_k"][0]["guided"])
    assert set(chosen) == {guided, (4, 5), tuple(range(6))}
    assert all(p["predicted_mean_step_seconds"] is None for p in payload["points"])
    assert payload["prediction"] is None and payload["validation_examples"] == 10
    assert "No cost profile was made" in (out / "frontier.md").read_text()


def test_frontier_end_to_end(tmp_path, six_layer_bert, tiny_task):
    # few steps per run: the test is of the study's bookkeeping, not of what a plan learns
    train = {"epochs": 2, "lr": 5e-3, "batch_size": 16, "max_steps": 3}
    cfg = Config.model_validate(
        tiny_config(
            six_layer_bert, tiny_task, tmp_path / "unused", train=train, probe={"steps": 4}, rank={"k": 2}
        )
    )
    out = tmp_path / "frontier"
    payload = run_frontier(
        cfg, out, ks=[2], seeds=(0, 1), draws=2, budget=0.8, profile_batches=2, profile_rounds=1
    )
    for name in ("frontier.json", "frontier.md", "frontier.png", "frontier.html"):
        assert (out / name).is_file()
    assert (out / "frontier.md").read_text().endswith("\n![metric against device-hours](frontier.png)\n")
    runs = payload["runs"]
    distinct = {tuple(p["layers"]) for p in payload["points"]}
    fast = [r for r in runs if r["variant"] == "fast"]
    assert len(fast) == 2 * len(distinct)  # every distinct plan once per seed
    assert len([r for r in runs if r["variant"] == "protocol"]) == 4  # guided k=2 and every layer, 2 seeds
    for r in runs:
        summary = json.loads((tmp_path / "frontier" / "runs" / r["folder"].split("/runs/")[1] /
                              "train_summary.json").read_text())  # fmt: skip
        assert r["accuracy"] == pytest.approx(summary["final_metrics"]["validation"]["accuracy"], abs=1e-3)
        assert summary["plan"]["layers"] == r["layers"]
        if r["variant"] == "fast":
            assert summary["prediction"]["mean_step_seconds"] > 0  # costs.json travelled with the run
        else:
            assert summary["frozen_prefix"]["cache_store"] == "off"
    guided = tuple(payload["per_k"][0]["guided"])
    for c in payload["per_k"][0]["contrasts"]:
        if c["same_plan"]:
            assert c["difference"] == 0.0
        else:
            other = tuple(c["layers"]) if c["layers"] else None
            if other:
                acc = {r["seed"]: r["accuracy"] for r in fast if tuple(r["layers"]) == guided}
                acc_o = {r["seed"]: r["accuracy"] for r in fast if tuple(r["layers"]) == other}
                assert c["difference"] == pytest.approx(np.mean([acc[s] - acc_o[s] for s in (0, 1)]))
    # a second call reuses every run (nothing is trained again: the summaries are not rewritten)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/train_summary.json")}
    again = run_frontier(
        cfg, out, ks=[2], seeds=(0, 1), draws=2, budget=0.8, profile_batches=2, profile_rounds=1
    )
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in runs]
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/train_summary.json")} == stamps
