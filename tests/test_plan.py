"""The layer plan as an explicit input: rank.layers / --layers end to end, flags resolved into the config with
an explicit unset marker, config variants, and the plan's JSON form."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from actlora_cli import artifacts
from actlora_cli.cli import _rule_values, app
from actlora_cli.config import CLEAR, Config, load_config
from actlora_cli.errors import ArtifactError, ConfigError
from actlora_cli.rank import resolve_plan
from actlora_cli.selection import Plan, by_strategy, every_layer, explicit, select
from tests.conftest import tiny_config

runner = CliRunner()
SIX = 6


def _invoke(*args):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _cfg_file(tmp_path, model, task, **sections) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(model, task, tmp_path / "run", **sections)))
    return str(path)


# --- end to end ------------------------------------------------------------------------------------------


def test_train_layers_345_end_to_end(tmp_path, six_layer_bert, tiny_task):
    """rank --layers without a probe writes an explicit plan; train --layers adapts exactly those layers; eval
    reads the adapter back."""
    cfg = _cfg_file(tmp_path, six_layer_bert, tiny_task, train={"epochs": 1})
    result, text = _invoke("rank", "-c", cfg, "--layers", "5,3,4")
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert (sel["layers"], sel["k"], sel["rule"], sel["tau"]) == ([3, 4, 5], 3, "explicit", None)
    assert sel["scores"] is None and sel["ranking"] is None and sel["scores_hash"] is None
    assert Plan.from_doc(sel, "selection.json") == explicit([3, 4, 5])

    result, text = _invoke("train", "-c", cfg, "--layers", "3,4,5")
    assert result.exit_code == 0, text
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["plan"]["layers"] == [3, 4, 5] and summary["plan"]["rule"] == "explicit"
    assert summary["plan"]["source"] == "rank.layers"
    resolved = yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())
    assert {k: resolved["rank"][k] for k in ("k", "tau", "layers")} == {
        "k": None,
        "tau": None,
        "layers": [3, 4, 5],
    }
    weights = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    adapted = {int(name.split(".layer.")[1].split(".")[0]) for name in weights if "lora_" in name}
    assert adapted == {3, 4, 5}
    # Q and V of 3 layers, each A (8 x 32) and B (32 x 8), plus the classifier (32 x 2 + 2)
    assert summary["trainable_parameters"] == 3 * 2 * 2 * 8 * 32 + 32 * 2 + 2
    # the backward stops at layer 3: the prefix below it runs without autograd, and nothing else is trained
    assert summary["frozen_prefix"]["lowest_trained_layer"] == 3

    result, text = _invoke("eval", "-c", cfg)
    assert result.exit_code == 0, text
    assert (tmp_path / "run" / "eval.json").is_file()


def test_explicit_layers_win_over_an_older_selection(tmp_path, six_layer_bert, tiny_task):
    cfg = Config.model_validate(tiny_config(six_layer_bert, tiny_task, tmp_path / "run"))
    artifacts.finish_stage(cfg, "selection", {**explicit([0]).to_doc(), "model": {"name": cfg.model.name}})
    assert resolve_plan(cfg, SIX).layers == [0]
    assert resolve_plan(cfg.with_overrides({"rank.layers": [4, 5]}), SIX).layers == [4, 5]
    assert resolve_plan(cfg.with_overrides({"rank.k": "all"}), SIX).layers == list(range(SIX))


def test_layers_outside_the_model_are_refused_naming_them(tmp_path, six_layer_bert, tiny_task):
    cfg = _cfg_file(tmp_path, six_layer_bert, tiny_task, train={"max_steps": 1})
    result, text = _invoke("train", "-c", cfg, "--layers", "4,9")
    assert result.exit_code == 2
    assert "layer(s) [9] but the model has 6 (0..5)" in text
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [("3,3", "a layer is listed twice"), ("-1,2", "layer indices start at 0"), ("a,b", "--layers")],
)
def test_bad_layers_flag(tmp_path, six_layer_bert, tiny_task, flag, fragment):
    cfg = _cfg_file(tmp_path, six_layer_bert, tiny_task)
    result, text = _invoke("rank", "-c", cfg, "--layers", flag)
    assert result.exit_code == 2 and fragment in text, text
    assert not (tmp_path / "run" / "selection.json").exists()


# --- flags -> config: one rule, an explicit unset marker --------------------------------------------------


def test_a_rule_flag_replaces_the_files_whole_rule(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rank:\n  tau: 0.5\n")
    assert load_config(path).rank.tau == 0.5
    by_k = load_config(path, values=_rule_values("3", None, None))
    assert (by_k.rank.k, by_k.rank.tau, by_k.rank.layers) == (3, None, None)
    by_layers = load_config(path, values=_rule_values(None, None, "2,0"))
    assert (by_layers.rank.k, by_layers.rank.tau, by_layers.rank.layers) == (None, None, [0, 2])
    path.write_text("rank:\n  layers: [1, 2]\n")
    by_tau = load_config(path, values=_rule_values(None, 0.75, None))
    assert (by_tau.rank.k, by_tau.rank.tau, by_tau.rank.layers) == (None, 0.75, None)
    # no flag: the file's rule stands
    assert _rule_values(None, None, None) == {}
    assert load_config(path, values=_rule_values(None, None, None)).rank.layers == [1, 2]


def test_k_all_flag_and_none_values_are_not_cleared():
    values = _rule_values("all", None, None)
    assert values == {"rank.k": "all", "rank.tau": CLEAR, "rank.layers": CLEAR}
    with pytest.raises(ConfigError, match="--k"):
        _rule_values("three", None, None)


def test_with_overrides_is_validated_and_leaves_the_original():
    base = load_config(values={"rank.k": 3})
    variant = base.with_overrides(
        {"probe.seed": 7, "rank.k": CLEAR, "rank.tau": 0.5, "output_dir": "elsewhere"}
    )
    assert (variant.probe.seed, variant.rank.k, variant.rank.tau, variant.output_dir) == (
        7,
        None,
        0.5,
        "elsewhere",
    )
    assert (base.probe.seed, base.rank.k, base.rank.tau) == (0, 3, None)
    with pytest.raises(ConfigError) as info:
        base.with_overrides({"probe.sed": 1, "train.lr": -1})
    where = sorted(p.where for p in info.value.problems)
    assert where == ["probe.sed", "train.lr"]
    assert "did you mean 'probe.seed'" in str(info.value)
    with pytest.raises(ConfigError, match="not several"):
        base.with_overrides({"rank.layers": [1]})  # k=3 still set: one rule only


def test_dtype_vocabulary_accepts_torch_names():
    cfg = load_config(
        values={"model.dtype": "bfloat16", "train.precision": "bf16", "train.prefix_cache_dtype": "float32"}
    )
    assert (cfg.model.dtype, cfg.train.precision, cfg.train.prefix_cache_dtype) == ("bf16", "bf16", "fp32")
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config(values={"model.dtype": "float64"})


# --- the plan's JSON form ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [select([0.2, 1.0, 0.0, 0.6], k=2), select([0.2, 1.0, 0.0, 0.6], tau=0.9), every_layer(4),
     explicit([3, 1]), explicit([0, 3], [0.2, 1.0, 0.0, 0.6])],
)  # fmt: skip
def test_plan_round_trips_through_its_document(plan):
    doc = json.loads(json.dumps(plan.to_doc()))
    assert Plan.from_doc(doc, "x") == plan


def test_explicit_plan_records_its_share_of_the_score():
    plan = explicit([3, 0], [0.2, 1.0, 0.0, 0.6])
    assert plan.layers == [0, 3] and plan.k == 2 and plan.ranking == [1, 3, 0, 2]
    assert plan.coverage == pytest.approx((0.2 + 0.6) / 1.8)
    # a top-k plan's share is its C(k)
    top = select([0.2, 1.0, 0.0, 0.6], k=2)
    assert top.coverage == pytest.approx(1.6 / 1.8) == top.cumulative_importance[1]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [({"k": 1}, "missing layers"), ({**explicit([1]).to_doc(), "layers": ["1"]}, "list of layer indices")],
)
def test_plan_document_without_layers_is_an_artifact_error(doc, fragment):
    with pytest.raises(ArtifactError, match=fragment) as info:
        Plan.from_doc(doc, "run/selection.json")
    assert info.value.problems[0].where == "run/selection.json"


# --- plans that need no guidance: the strategies a guided plan must beat at equal k ------------------------


@pytest.mark.parametrize(
    ("strategy", "k", "layers", "expected"),
    [
        ("last", 3, 6, [3, 4, 5]),
        ("first", 3, 6, [0, 1, 2]),
        ("uniform", 3, 6, [1, 3, 5]),  # the centres of [0, 2), [2, 4), [4, 6)
        ("uniform", 2, 6, [1, 4]),  # of [0, 3), [3, 6): 1.5 and 4.5, floored
        ("uniform", 1, 6, [3]),
        ("uniform", 6, 6, [0, 1, 2, 3, 4, 5]),
        ("uniform", 6, 30, [2, 7, 12, 17, 22, 27]),  # spans of 5 layers, centres at 2.5 + 5 i
        ("last", 6, 30, [24, 25, 26, 27, 28, 29]),
    ],
)
def test_positional_strategies_hand_worked(strategy, k, layers, expected):
    plan = by_strategy(strategy, k, layers)
    assert plan.layers == expected and plan.k == k and plan.strategy == strategy and plan.rule == "top_k"
    assert plan.ranking is None and plan.coverage is None  # nothing guided it


def test_a_random_plan_is_reproducible_from_its_seed():
    draws = [tuple(by_strategy("random", 3, 6, seed=seed).layers) for seed in range(200)]
    assert by_strategy("random", 3, 6, seed=7).layers == list(draws[7])  # the same seed, the same plan
    assert all(len(set(d)) == 3 and all(0 <= i < 6 for i in d) and list(d) == sorted(d) for d in draws)
    assert len(set(draws)) == 20  # 200 seeds reach every one of the C(6, 3) = 20 plans
    assert by_strategy("random", 3, 6, seed=7).seed == 7 and by_strategy("last", 3, 6).seed is None


def test_inverse_takes_the_bottom_k_and_positional_plans_record_their_share():
    scores = [0.2, 1.0, 0.0, 0.6, 0.3, 0.9]
    inverse = by_strategy("inverse", 3, 6, scores=scores)
    assert inverse.layers == [0, 2, 4] and inverse.coverage == pytest.approx(0.5 / 3.0)
    last = by_strategy("last", 3, 6, scores=scores)
    assert last.layers == [3, 4, 5] and last.coverage == pytest.approx(1.8 / 3.0)
    assert last.ranking == [1, 5, 3, 4, 0, 2]  # the guided ranking beside it, for comparison
    with pytest.raises(ConfigError, match="needs the probe's scores"):
        by_strategy("inverse", 3, 6)
    with pytest.raises(ConfigError, match="k=7 but the model has 6 layers"):
        by_strategy("last", 7, 6)


def test_strategy_needs_k():
    with pytest.raises(ConfigError, match="rank.strategy=last chooses rank.k layers"):
        load_config(values={"rank.strategy": "last", "rank.tau": 0.5})
    assert load_config(values={"rank.strategy": "last", "rank.k": 2}).rank.strategy == "last"


def test_rank_and_train_by_position_need_no_probe(tmp_path, six_layer_bert, tiny_task):
    cfg = _cfg_file(tmp_path, six_layer_bert, tiny_task, train={"max_steps": 1})
    result, text = _invoke("rank", "-c", cfg, "--strategy", "random", "--k", "2", "--seed", "5")
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert (sel["strategy"], sel["seed"], sel["k"]) == ("random", 5, 2)
    assert sel["layers"] == by_strategy("random", 2, SIX, seed=5).layers and sel["scores"] is None
    result, text = _invoke("train", "-c", cfg, "--strategy", "uniform", "--k", "3")
    assert result.exit_code == 0, text
    plan = json.loads((tmp_path / "run" / "train_summary.json").read_text())["plan"]
    assert (plan["layers"], plan["strategy"], plan["source"]) == (
        [1, 3, 5],
        "uniform",
        "rank.strategy=uniform",
    )


def test_guided_and_inverse_plans_come_from_the_probe(tmp_path, six_layer_bert, tiny_task):
    cfg = _cfg_file(tmp_path, six_layer_bert, tiny_task)
    assert _invoke("probe", "-c", cfg, "--steps", "2")[0].exit_code == 0
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())["scores"]
    order = sorted(range(SIX), key=lambda i: (-scores[i], i))
    for strategy, expected in (("scores", sorted(order[:2])), ("inverse", sorted(order[-2:]))):
        result, text = _invoke("rank", "-c", cfg, "--strategy", strategy, "--k", "2")
        assert result.exit_code == 0, text
        sel = json.loads((tmp_path / "run" / "selection.json").read_text())
        assert sel["layers"] == expected and sel["strategy"] == strategy
