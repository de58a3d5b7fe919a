"""probe.steps=auto: the stop rule on hand-worked per-batch values, the probe stage stopping with it (its
scores those of a fixed-S probe of the batches it used), and the config refusing it where there is no
standard error."""

from __future__ import annotations

import json

import pytest
import torch

from actlora_cli.config import Config, RankSection, load_config
from actlora_cli.errors import ConfigError
from actlora_cli.probe import run_probe
from actlora_cli.rank import run_rank
from actlora_cli.stopping import AutoStop
from tests.conftest import tiny_config


def _alternating(base: list[float], swing: list[float], n: int) -> torch.Tensor:
    """n per-batch rows: layer i is base[i] + swing[i] on even batches and base[i] - swing[i] on odd ones, so
    after an even number of batches the running mean is exactly ``base``."""
    return torch.tensor(
        [[b + (s if t % 2 == 0 else -s) for b, s in zip(base, swing, strict=True)] for t in range(n)],
        dtype=torch.float64,
    )


def _first_stop(rule: AutoStop, means: torch.Tensor) -> int | None:
    """The batch count at which ``rule`` first says stop, called after every batch as the probe does."""
    return next((n for n in range(1, len(means) + 1) if rule(means[:n])), None)


def test_clearly_separated_layers_stop_at_min_steps():
    # layers 0..3 at 0, 1, 2, 3, each swinging +-0.1. After 8 batches: the top-2 is {2, 3}, layer 2 (2.0) is
    # 1.0 above layer 1; each layer's per-batch sd = sqrt(8 * 0.01 / 7) = 0.1069, se = 0.1069 / sqrt(8) =
    # 0.0378, the difference's se = 0.0535: 1.0 > 2 * 0.0535. The plan from 5..8 batches is {2, 3} too.
    means = _alternating([0.0, 1.0, 2.0, 3.0], [0.1] * 4, 20)
    rule = AutoStop(RankSection(k=2), min_steps=8, max_steps=20)
    assert _first_stop(rule, means) == 8 and rule.resolved
    check = rule.last
    assert check["layers"] == [2, 3] and (check["last_in"], check["first_out"]) == (2, 1)
    assert check["gap"] == pytest.approx(1.0)
    # the swings are in phase: the per-batch difference of layers 2 and 1 is 1.0 every time, so its paired
    # standard error is 0; the independent formula would say sqrt(2) x 0.0378
    assert check["paired"] and check["noise"] == pytest.approx(0.0)
    assert check["independent_noise"] == pytest.approx((2 * 8 * 0.01 / 7 / 8) ** 0.5)


def test_a_near_tie_at_the_boundary_runs_to_the_cap():
    # layer 2 clearly on top; layers 0 and 1 at 1.00 and 1.01 with opposite +-0.5 swings: after an even
    # number n of batches the gap is 0.01 against 2 * sqrt(2) * 0.5 sqrt(n / (n - 1)) / sqrt(n) (0.32 at
    # n = 20), and after an odd one layer 0 leads (the plan flips): never resolved within 20 batches.
    means = _alternating([1.0, 1.01, 5.0], [0.5, -0.5, 0.0], 20)
    rule = AutoStop(RankSection(k=2), min_steps=8, max_steps=20)
    assert _first_stop(rule, means) is None and not rule.resolved
    assert rule.last["layers"] == [1, 2] and rule.last["gap"] == pytest.approx(0.01)
    assert rule.last["within_noise"]


def test_the_plan_must_have_settled():
    # k=1, layers 0 and 1: the first batch (1.0, 1.1), then (5.0, 1.1) for ever after. After 4 batches layer 0
    # leads by 4.0 - 1.1 = 2.9; its per-batch values 1, 5, 5, 5 have sd 2 (squares 9 + 1 + 1 + 1 over 3),
    # se 2 / sqrt(4) = 1, layer 1's none: 2.9 > 2 * 1, apart. But the plan of the first batch alone was
    # layer 1, so the plans of the prefixes 1..4 are not all one: no stop. After 5 batches the prefixes 2..5
    # agree (layer 0) and 4.2 - 1.1 = 3.1 > 2 * sqrt(12.8 / 4) / sqrt(5) = 1.6: stop.
    means = torch.tensor([[1.0, 1.1]] + [[5.0, 1.1]] * 9, dtype=torch.float64)
    rule = AutoStop(RankSection(k=1), min_steps=4, max_steps=10)
    assert not rule(means[:4])
    assert rule.last["gap"] == pytest.approx(2.9) and rule.last["noise"] == pytest.approx(1.0)
    assert not rule.last["within_noise"] and not rule.last["settled"]
    assert rule(means[:5]) and rule.last["layers"] == [0] and rule.last["noise"] == pytest.approx(0.8)


def test_tau_resolves_the_k_it_picks():
    # scores (min-max) of base (0, 1, 2, 7): 0, 1/7, 2/7, 1; sorted, C(1) = 7/10, C(2) = 9/10, C(3) = 1.
    # tau = 0.8 picks k = 2: the boundary between layer 2 (2.0) and layer 1 (1.0), far apart.
    means = _alternating([0.0, 1.0, 2.0, 7.0], [0.1] * 4, 12)
    rule = AutoStop(RankSection(tau=0.8), min_steps=8, max_steps=12)
    assert _first_stop(rule, means) == 8
    assert rule.last["cut"] == 2 and rule.last["layers"] == [2, 3]
    rule = AutoStop(RankSection(tau=0.7), min_steps=8, max_steps=12)
    assert _first_stop(rule, means) == 8 and rule.last["cut"] == 1 and rule.last["layers"] == [3]
    # layers 1 and 2 tied at 1.0 (opposite swings): tau = 0.8 picks k = 2 (C(1) = 7/9, C(2) = 8/9), whose
    # boundary is the tie: it runs to the cap
    tied = _alternating([0.0, 1.0, 1.0, 7.0], [0.0, 0.5, -0.5, 0.0], 12)
    rule = AutoStop(RankSection(tau=0.8), min_steps=8, max_steps=12)
    assert _first_stop(rule, tied) is None and rule.last["cut"] == 2


def test_inverse_resolves_the_complement():
    # the bottom-1 of (0, 1, 2, 3) is the complement of the top-3: the boundary between layers 1 and 0
    means = _alternating([0.0, 1.0, 2.0, 3.0], [0.1] * 4, 10)
    rule = AutoStop(RankSection(k=1, strategy="inverse"), min_steps=8, max_steps=10)
    assert _first_stop(rule, means) == 8 and (rule.last["last_in"], rule.last["first_out"]) == (1, 0)


@pytest.mark.parametrize(
    "rank",
    [{"k": "all"}, {"k": 4}, {"layers": [0, 1]}, {"k": 2, "strategy": "last"}],
    ids=["all", "k=L", "layers", "positional"],
)
def test_a_plan_without_a_boundary_stops_at_the_first_check(rank):
    means = _alternating([1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 0.5, -0.5], 10)  # every layer tied: no ranking
    rule = AutoStop(RankSection(**rank), min_steps=8, max_steps=10)
    assert _first_stop(rule, means) == 8 and rule.resolved


def test_no_rule_runs_to_the_cap_and_the_first_check_is_never_past_the_cap():
    means = _alternating([0.0, 1.0, 2.0, 3.0], [0.1] * 4, 10)
    assert _first_stop(AutoStop(RankSection(), min_steps=8, max_steps=10), means) is None
    # min_steps above the cap: the one check comes at the cap
    assert _first_stop(AutoStop(RankSection(k=2), min_steps=50, max_steps=5), means) == 5


# ---------------------------------------------------------------------------------------------------------
# The probe stage


def _doc_values(doc):
    return {key: doc[key] for key in ("raw", "scores", "raw_stderr", "tokens_seen", "examples_seen")}


def test_auto_probe_scores_are_those_of_a_fixed_probe_of_the_batches_it_used(
    six_layer_bert, tiny_task, tmp_path
):
    auto = Config.model_validate(
        tiny_config(
            six_layer_bert,
            tiny_task,
            tmp_path / "auto",
            probe={"steps": "auto", "max_steps": 40},
            rank={"k": 2},
        )
    )
    doc = run_probe(auto)
    used = doc["steps_used"]
    assert doc["steps"] == "auto" and doc["max_steps"] == 40 and 8 <= used <= 40
    assert doc["batches_seen"] == used and doc["stop_reason"] in ("resolved", "cap")
    assert doc["stop_reason"] == "cap" or doc["stop_check"]["gap"] > 2 * doc["stop_check"]["noise"]
    # the same seed gives the same batches: a fixed probe of `used` batches scores exactly alike
    fixed = run_probe(auto.with_overrides({"probe.steps": used, "output_dir": str(tmp_path / "fixed")}))
    assert fixed["steps"] == fixed["steps_used"] == fixed["max_steps"] == used
    assert fixed["stop_reason"] == "fixed" and fixed["stop_check"] is None
    assert _doc_values(doc) == _doc_values(fixed)
    if doc["stop_reason"] == "resolved":  # rank then finds the plan's boundary clear of the noise
        selection = run_rank(auto)
        assert selection["layers"] == doc["stop_check"]["layers"]
        assert not selection["boundary"]["within_noise"]
    written = json.loads((tmp_path / "auto" / "scores.json").read_text())
    assert written["steps"] == "auto" and written["steps_used"] == used


def test_auto_probe_without_a_rule_probes_to_the_cap(tiny_models, tiny_task, tmp_path):
    cfg = Config.model_validate(
        tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run", probe={"steps": "auto", "max_steps": 5})
    )
    doc = run_probe(cfg)
    assert (doc["steps_used"], doc["stop_reason"], doc["stop_check"]) == (5, "cap", None)


# ---------------------------------------------------------------------------------------------------------
# The config


def test_auto_needs_the_activation_scorer():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["probe.steps=auto", "probe.scorer=cka"])
    (problem,) = info.value.problems
    assert problem.where == "probe.steps" and "cka" in problem.what and "activation_norm" in problem.fix
    assert load_config(None, ["probe.steps=auto"]).probe.steps == "auto"
    assert load_config(None, ["probe.steps=auto", "probe.scorer=activation_norm", "probe.max_steps=7"])


def test_auto_with_cka_is_a_usage_error_on_the_command_line(tiny_models, tiny_task, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from actlora_cli.cli import app

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run")))
    result = CliRunner().invoke(
        app, ["probe", "-c", str(path), "--steps", "auto", "--set", "probe.scorer=cka"]
    )
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2 and "probe.steps" in text
    assert not (tmp_path / "run" / "scores.json").exists()
