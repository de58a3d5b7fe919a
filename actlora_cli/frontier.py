"""``actlora study frontier``: does the guided plan beat simpler plans at equal cost?

For each k it trains the guided plan (the probe's top-k), the budget-selected plan (the greatest total score
within ``budget`` x LoRA-on-every-layer's predicted cost), the last, first and uniform k layers and N random
draws, over seeds, plus every layer; each distinct layer set is trained once per seed, whatever number of
strategies chose it (--strategies narrows the field). Every run is evaluated on the whole validation split
(or its first N examples) and keeps its per-example predictions (``predictions.json``, written by train
after its last step), so plans are compared on the same sentences:

- per k, guided - each other plan, paired over seeds and examples, with a bootstrap 95 % interval, and the
  guided plan's percentile among the random plans;
- per cost bucket (terciles of device-hours, probe included), the same for the guided plans in it;
- metric against device-hours with the Pareto front marked;
- predicted (``costs.json``) against measured step time for every run;
- the fast defaults (length-grouped batches, the prefix cache) against the paper's protocol, for the
  guided plan at the config's k and for every layer.

Layout under ``<out>``: ``probe/`` (scores.json, costs.json), ``runs/<plan>-seed<s>[-protocol]/``
(ordinary run folders), ``frontier.json``, ``frontier.md``, ``frontier.png``. A
run already made from the same config is reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import artifacts, ui
from .analysis import frontier_stats as fs
from .analysis import report
from .config import CLEAR, Config
from .costmodel import CostModel, RunShape, predict, within_budget
from .errors import ArtifactError, ConfigError, Problem
from .selection import by_strategy

PLAN_STRATEGIES = ("scores", "budget", "last", "first", "uniform", "random")
# the plans the guided one is measured against (--strategies); the guided plan and every layer always run
OTHER_STRATEGIES = ("budget", "last", "first", "uniform", "random")
PROTOCOL = {"train.group_by_length": False, "train.prefix_cache": "off"}  # the paper's loop, for contrast


def _name(layers: tuple[int, ...]) -> str:
    return "L" + "-".join(map(str, layers))


def plan_table(
    scores: list[float],
    model: CostModel | None,
    shape: RunShape | None,
    ks: list[int],
    draws: int,
    budget: float,
    strategies: tuple[str, ...] = OTHER_STRATEGIES,
) -> dict[tuple[int, ...], list[dict[str, Any]]]:
    """Distinct layer sets -> the (k, strategy, draw) labels that chose them: the guided plan and each of
    ``strategies`` per k. Every layer is always in."""
    n = len(scores)
    plans: dict[tuple[int, ...], list[dict[str, Any]]] = {}

    def add(layers, k: int, strategy: str, draw: int | None = None) -> None:
        plans.setdefault(tuple(sorted(layers)), []).append({"k": k, "strategy": strategy, "draw": draw})

    every = predict(model, list(range(n)), shape)["step_seconds_total"] if "budget" in strategies else 0.0
    for k in ks:
        if k >= n:
            continue
        add(by_strategy("scores", k, n, 0, scores).layers, k, "scores")
        found = within_budget(model, scores, shape, budget * every, k) if "budget" in strategies else None
        if found is not None:
            add(found[0], k, "budget")
        for strategy in ("last", "first", "uniform"):
            if strategy in strategies:
                add(by_strategy(strategy, k, n).layers, k, strategy)
        for draw in range(draws if "random" in strategies else 0):
            add(by_strategy("random", k, n, draw).layers, k, "random", draw)
    add(range(n), n, "all")
    return plans


def run_frontier(
    cfg: Config,
    out: Path,
    ks: list[int] | None = None,
    seeds: tuple[int, ...] = (0, 1),
    draws: int = 3,
    budget: float = 0.75,
    protocol_check: bool = True,
    profile_batches: int = 6,
    profile_rounds: int = 3,
    strategies: tuple[str, ...] = OTHER_STRATEGIES,
    eval_examples: int | None = None,
    profile: bool = True,
) -> dict[str, Any]:
    """``eval_examples``: the first N validation examples (default: the whole split, for the tightest
    intervals; a deep model on a CPU cannot afford it). ``profile=False`` skips the cost profile (a full
    training step of every one-layer plan: L + 1 plans, costly on a deep model without a GPU): no budget plan
    and no predicted step times then."""
    from .data import task_spec
    from .probe import run_probe
    from .profile import run_profile

    out = Path(out)
    spec = task_spec(cfg.task)
    if spec.is_regression:
        raise ConfigError(
            [Problem("task.name", f"{spec.name} is a regression task", "the frontier compares accuracy")]
        )
    unknown = sorted(set(strategies) - set(OTHER_STRATEGIES))
    if unknown:
        raise ConfigError(
            [Problem("--strategies", f"unknown {unknown}", f"choose from {', '.join(OTHER_STRATEGIES)}")]
        )
    if not profile and "budget" in strategies:
        raise ConfigError(
            [Problem("--strategies", "budget needs the cost profile", "drop budget, or drop --no-profile")]
        )
    base = cfg.with_overrides({"task.max_eval_examples": eval_examples if eval_examples else CLEAR})
    probe_cfg = base.with_overrides({"output_dir": str(out / "probe")})
    scores_doc = artifacts.made_from(probe_cfg.run_dir / "scores.json", "scores", probe_cfg)
    if scores_doc is None:
        ui.note(f"frontier: probe -> {probe_cfg.run_dir}")
        scores_doc = run_probe(probe_cfg)
    costs_doc = artifacts.made_from(probe_cfg.run_dir / "costs.json", "costs", probe_cfg)
    if costs_doc is None and profile:
        ui.note(f"frontier: profile -> {probe_cfg.run_dir}")
        costs_doc = run_profile(probe_cfg, batches=profile_batches, rounds=profile_rounds)
    scores, n = scores_doc["scores"], len(scores_doc["scores"])
    ks = ks or list(range(1, n + 1))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ConfigError([Problem("--k", f"k={bad} but the model has {n} layers", f"choose k in 1..{n}")])
    model = CostModel.from_doc(costs_doc) if costs_doc else None
    shape = _shape(base, costs_doc) if costs_doc else None
    plans = plan_table(scores, model, shape, ks, draws, budget, strategies)

    focus_k = base.rank.k if isinstance(base.rank.k, int) and base.rank.k < n else min(3, n - 1)
    guided_focus = tuple(by_strategy("scores", focus_k, n, 0, scores).layers)
    # the protocol check's plan is also trained the fast way, whether or not --k asked for its k
    plans.setdefault(guided_focus, [{"k": focus_k, "strategy": "scores", "draw": None}])
    jobs = []  # (layers, seed, variant)
    for seed in seeds:
        order = list(plans)
        random.Random(seed).shuffle(order)  # machine drift hits no k or strategy more than another
        jobs += [(layers, seed, "fast") for layers in order]
        if protocol_check:
            jobs += [(layers, seed, "protocol") for layers in (guided_focus, tuple(range(n)))]
    records = []
    for i, (layers, seed, variant) in enumerate(jobs, 1):
        ui.note(f"[bold][{i}/{len(jobs)}][/] frontier: layers {list(layers)}, seed {seed}, {variant}")
        costs = probe_cfg.run_dir / "costs.json" if costs_doc else None
        records.append(_train_one(base, out, layers, seed, variant, costs))
    payload = analyse(records, plans, scores_doc, costs_doc, model, shape, budget, seeds, focus_k)
    payload["command"] = {
        "config": base.to_dict(),
        "ks": ks,
        "seeds": list(seeds),
        "draws": draws,
        "budget": budget,
        "protocol_check": protocol_check,
        "strategies": list(strategies),
        "eval_examples": eval_examples,
        "profile": {"batches": profile_batches, "rounds": profile_rounds} if costs_doc else None,
    }
    payload["provenance"] = artifacts.provenance(base.hash())
    plot(payload, out / "frontier.png")
    report.write_study(out, "frontier", payload, markdown(payload, out))
    return payload


def _shape(cfg: Config, costs_doc: dict[str, Any]) -> RunShape:
    from .rank import run_shape

    return run_shape(cfg, costs_doc)


def _train_one(
    base: Config, out: Path, layers: tuple[int, ...], seed: int, variant: str, costs: Path | None
) -> dict[str, Any]:
    """Train (unless done) and record one run: its metric, costs, prediction and per-example correctness."""
    from .train import run_train

    folder = out / "runs" / f"{_name(layers)}-seed{seed}{'-protocol' if variant == 'protocol' else ''}"
    values = {
        "output_dir": str(folder), "rank.layers": list(layers), "rank.k": CLEAR, "rank.tau": CLEAR,
        "rank.strategy": "scores", "rank.budget": CLEAR, "rank.budget_hours": CLEAR, "train.seed": seed,
        **(PROTOCOL if variant == "protocol" else {}),
    }  # fmt: skip
    cfg = base.with_overrides(values)
    summary = _trained_alike(cfg)
    preds_path = folder / "predictions.json"
    if summary is None or not preds_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if variant == "fast" and costs:  # the protocol variant is profiled under other settings
            artifacts.atomic_write_text(folder / "costs.json", costs.read_text())
        summary = run_train(cfg, overwrite=True)
    preds = json.loads(preds_path.read_text())
    correct = [int(p == y) for p, y in zip(preds["predictions"], preds["labels"], strict=True)]
    return {
        "layers": list(layers),
        "seed": seed,
        "variant": variant,
        "folder": str(folder),
        "accuracy": sum(correct) / len(correct),
        "final_metrics": summary["final_metrics"],
        "device_hours": summary["device_hours"],
        "step_seconds": summary["cost"]["step_seconds"],
        "steps": summary["steps"],
        "trainable_parameters": summary["trainable_parameters"],
        "prediction": summary.get("prediction"),
        "prefix_cache": (summary.get("frozen_prefix") or {}).get("cache_store"),
        "host": summary.get("host"),
        "epoch_step_seconds": epoch_step_seconds(
            folder / "train_log.jsonl", summary["steps"] / summary["epochs"]
        ),
        "correct": correct,
    }


def epoch_step_seconds(log_path: Path, steps_per_epoch: float) -> dict[str, float | None]:
    """Mean timed step (forward + backward + optimizer, s) of the first epoch and of the later ones, from
    train_log.jsonl: the frozen-prefix cache serves only the later epochs, so their cost is its effect."""
    first, later = [], []
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        seconds = (row["forward_ms"] + row["backward_ms"] + row["optimizer_ms"]) / 1000
        (first if row["step"] <= steps_per_epoch else later).append(seconds)
    return {
        "first_epoch": statistics.fmean(first) if first else None,
        "later_epochs": statistics.fmean(later) if later else None,
    }


def _trained_alike(cfg: Config) -> dict[str, Any] | None:
    """The run folder's train_summary.json when it was trained with every setting that changes what is learned
    equal to ``cfg``'s (train.training_settings: a setting added to the schema since, at its default, or a
    change to the probe, does not throw an hour of runs away); else None."""
    from .train import training_settings

    try:
        summary = artifacts.read_artifact(cfg.run_dir / "train_summary.json", "train_summary")
        made = artifacts.resolved_config(cfg.run_dir)
    except (ArtifactError, OSError, ValueError, yaml.YAMLError):
        return None
    return summary if training_settings(made) == training_settings(cfg) else None


# ---------------------------------------------------------------------------------------------------------
# Analysis


def analyse(
    records: list[dict[str, Any]],
    plans: dict[tuple[int, ...], list[dict[str, Any]]],
    scores_doc: dict[str, Any],
    costs_doc: dict[str, Any] | None,
    model: CostModel | None,
    shape: RunShape | None,
    budget: float,
    seeds: tuple[int, ...],
    focus_k: int,
) -> dict[str, Any]:
    probe_hours = scores_doc["timings"]["probe_s"] * scores_doc.get("world_size", 1) / 3600
    profile_hours = costs_doc["timings"]["total_s"] / 3600 if costs_doc else 0.0
    fast = [r for r in records if r["variant"] == "fast"]
    by_plan: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for r in fast:
        by_plan.setdefault(tuple(r["layers"]), []).append(r)

    def correct(layers: tuple[int, ...]) -> list[np.ndarray]:
        runs = sorted(by_plan[layers], key=lambda r: r["seed"])
        return [np.asarray(r["correct"]) for r in runs]

    points = []
    for layers, labels in plans.items():
        runs = by_plan[layers]
        strategies = sorted({lab["strategy"] for lab in labels})
        # what arriving at it cost, by its cheapest route: nothing by position (last, first, uniform, random,
        # every layer), the probe for the guided plan, the probe and the profile for a budget plan; the
        # guided route's own cost is kept apart (what a user of the guided plan pays)
        positional = bool(set(strategies) - {"scores", "budget"})
        charge = 0.0 if positional else probe_hours + profile_hours * ("scores" not in strategies)
        train_hours = statistics.fmean(r["device_hours"] for r in runs)
        predicted = predict(model, list(layers), shape)["mean_step_seconds"] if model else None
        measured = statistics.fmean(r["step_seconds"] / r["steps"] for r in runs)
        points.append({
            "layers": list(layers), "labels": labels, "strategies": strategies,
            "accuracy": statistics.fmean(r["accuracy"] for r in runs),
            "accuracy_by_seed": [r["accuracy"] for r in sorted(runs, key=lambda r: r["seed"])],
            "train_device_hours": train_hours, "selection_device_hours": charge,
            "device_hours": train_hours + charge,
            "guided_device_hours": train_hours + probe_hours if "scores" in strategies else None,
            "predicted_mean_step_seconds": predicted,
            "measured_mean_step_seconds": measured,
            "measured_over_predicted": measured / predicted if predicted else None,
            "trainable_parameters": runs[0]["trainable_parameters"],
            **{f"{part}_step_seconds": _mean_or_none(r.get("epoch_step_seconds", {}).get(part) for r in runs)
               for part in ("first_epoch", "later_epochs")},
        })  # fmt: skip
    front = fs.pareto_front([p["device_hours"] for p in points], [p["accuracy"] for p in points])
    for i, p in enumerate(points):
        p["pareto"] = i in front

    def plan_of(k: int, strategy: str, draw: int | None = None) -> tuple[int, ...] | None:
        for layers, labels in plans.items():
            if any(lab["k"] == k and lab["strategy"] == strategy and lab["draw"] == draw for lab in labels):
                return layers
        return None

    per_k = []
    for k in sorted({lab["k"] for labels in plans.values() for lab in labels if lab["strategy"] != "all"}):
        guided = plan_of(k, "scores")
        rows = []
        for strategy in ("budget", "last", "first", "uniform"):
            other = plan_of(k, strategy)
            if other is not None:
                rows.append({"against": strategy, "layers": list(other), "same_plan": other == guided,
                             **fs.paired_difference(correct(guided), correct(other))})  # fmt: skip
        randoms = [plan_of(k, "random", d) for d in range(len(plans))]
        randoms = [r for r in randoms if r is not None]
        if randoms:
            pooled = [np.mean([correct(r)[s] for r in randoms], axis=0) for s in range(len(seeds))]
            rows.append({"against": f"random (pooled over {len(randoms)} draws)", "layers": None,
                         "same_plan": False, **fs.paired_difference(correct(guided), pooled)})  # fmt: skip
        guided_acc = statistics.fmean(r["accuracy"] for r in by_plan[guided])
        random_accs = [statistics.fmean(r["accuracy"] for r in by_plan[x]) for x in randoms]
        per_k.append({
            "k": k, "guided": list(guided), "guided_accuracy": guided_acc, "contrasts": rows,
            "percentile_among_random": fs.percentile_among(guided_acc, random_accs),
            "random_accuracies": random_accs,
        })  # fmt: skip

    # per cost bucket (terciles of the plans' device-hours by their cheapest route): each guided plan, at its
    # own route's cost (training + probe), against the plans no probe chose in the same bucket
    costs = sorted(p["device_hours"] for p in points)
    edges = [costs[len(costs) // 3], costs[2 * len(costs) // 3]]

    def bucket(hours: float) -> int:
        return sum(hours >= e for e in edges)

    per_bucket = []
    for b in range(3):
        inside = [p for p in points if bucket(p["device_hours"]) == b]
        guided_in = [p for p in points if p["guided_device_hours"] is not None
                     and bucket(p["guided_device_hours"]) == b]  # fmt: skip
        others = [p for p in inside if "scores" not in p["strategies"]]
        if not inside and not guided_in:
            continue
        rows = []
        for g in guided_in:
            row = {"guided": g["layers"], "accuracy": g["accuracy"], "device_hours": g["guided_device_hours"]}
            if others:
                pooled = [np.mean([correct(tuple(o["layers"]))[s] for o in others], axis=0)
                          for s in range(len(seeds))]  # fmt: skip
                row["against_others_pooled"] = fs.paired_difference(correct(tuple(g["layers"])), pooled)
                best = max(others, key=lambda o: o["accuracy"])
                row["against_best_other"] = {
                    "layers": best["layers"],
                    **fs.paired_difference(correct(tuple(g["layers"])), correct(tuple(best["layers"]))),
                }
            rand = [o["accuracy"] for o in others if o["strategies"] == ["random"]]
            row["percentile_among_random"] = fs.percentile_among(g["accuracy"], rand)
            rows.append(row)
        span = [p["device_hours"] for p in inside] or [g["guided_device_hours"] for g in guided_in]
        per_bucket.append({"bucket": b, "device_hours_range": [min(span), max(span)], "plans": len(inside),
                           "guided": rows})  # fmt: skip

    protocol = []
    for layers in {tuple(r["layers"]) for r in records if r["variant"] == "protocol"}:
        slow = sorted((r for r in records if r["variant"] == "protocol" and tuple(r["layers"]) == layers),
                      key=lambda r: r["seed"])  # fmt: skip
        quick = sorted(by_plan[layers], key=lambda r: r["seed"])
        protocol.append({
            "layers": list(layers),
            "fast_accuracy": statistics.fmean(r["accuracy"] for r in quick),
            "protocol_accuracy": statistics.fmean(r["accuracy"] for r in slow),
            "fast_minus_protocol": fs.paired_difference([np.asarray(r["correct"]) for r in quick],
                                                        [np.asarray(r["correct"]) for r in slow]),
            "fast_device_hours": statistics.fmean(r["device_hours"] for r in quick),
            "protocol_device_hours": statistics.fmean(r["device_hours"] for r in slow),
            "prefix_cache": quick[0]["prefix_cache"],
        })  # fmt: skip
    ratios = [p["measured_over_predicted"] for p in points if p["measured_over_predicted"] is not None]
    hosts = [r["host"] or {} for r in records]
    return {
        "model": scores_doc["model"],
        "task": scores_doc["task"],
        "validation_examples": len(records[0]["correct"]),
        "scores": scores_doc["scores"],
        "score_stderr": scores_doc.get("score_stderr"),
        "probe_device_hours": probe_hours,
        "profile_device_hours": profile_hours,
        "budget": budget,
        "focus_k": focus_k,
        "points": points,
        "per_k": per_k,
        "per_bucket": per_bucket,
        "protocol": protocol,
        "prediction": {
            "median_abs_error": statistics.median(abs(r - 1) for r in ratios),
            "max_abs_error": max(abs(r - 1) for r in ratios),
            "within_10_percent": sum(abs(r - 1) <= 0.10 for r in ratios),
            "plans": len(ratios),
        }
        if ratios
        else None,  # no profile, no prediction
        "host_load": {
            "others_cpu_share_max": max((h.get("others_cpu_share") or 0.0) for h in hosts),
            "others_cpu_share_median": statistics.median((h.get("others_cpu_share") or 0.0) for h in hosts),
        },
        "runs": [{k: v for k, v in r.items() if k != "correct"} for r in records],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def epoch_cost_table(p: dict[str, Any]) -> list[str]:
    """Mean step time in the first epoch and in the later ones (where the frozen-prefix cache replays the
    stored prefix), each plan's later epochs as a share of every layer's."""
    every = next((q for q in p["points"] if "all" in q["strategies"]), None)
    base = every.get("later_epochs_step_seconds") if every else None
    rows = []
    for q in p["points"]:
        first, later = q.get("first_epoch_step_seconds"), q.get("later_epochs_step_seconds")
        share = later / base if base and later else None
        rows.append([str(q["layers"]), _num(first, 3), _num(later, 3), _num(share, 3)])
    if all(r[2] == "n/a" for r in rows):
        return []
    return [
        "## Step time by epoch",
        "",
        "Mean timed step (forward + backward + optimizer), seconds; the later epochs replay the frozen "
        "prefix where the cache is on.",
        "",
        report.markdown_table(
            ["layers", "epoch 1 step s", "later epochs step s", "later epochs / every layer's"], rows
        ),
        "",
    ]


def _mean_or_none(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(d: dict[str, Any]) -> str:
    return f"{100 * d['difference']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def markdown(p: dict[str, Any], folder: Path) -> str:
    """The frontier's report: every plan, per k, per cost bucket, the protocol check, and the chart (when
    ``folder`` holds it)."""
    split = (
        "the first examples of the validation split"
        if p["command"].get("eval_examples")
        else "the whole validation split"
    )
    lines = [
        f"# Frontier: {p['model']['name']} on {p['task']['name']}",
        "",
        f"Accuracy on {split} ({p['validation_examples']} examples), mean over seeds "
        f"{p['command']['seeds']}; device-hours = timed forward + backward + optimizer phases (training), "
        "plus what arriving at the plan cost by its cheapest route: nothing for a plan by position, the "
        f"probe ({3600 * p['probe_device_hours']:.1f} s) for the guided plan, and the profile too "
        f"({3600 * p['profile_device_hours']:.1f} s) for a budget plan the probe alone would not pick; per "
        "cost bucket, a guided plan is placed at its own route's cost (training + probe). "
        "Differences are in accuracy points, guided minus the other plan, paired over seeds and examples, "
        "with a bootstrap 95 % interval.",
        "",
        "## Every plan",
        "",
    ]
    rows = []
    for q in sorted(p["points"], key=lambda q: q["device_hours"]):
        labels = ", ".join(
            f"k{lab['k']} {lab['strategy']}{'' if lab['draw'] is None else lab['draw']}"
            for lab in q["labels"]
        )
        rows.append([
            str(q["layers"]), labels, f"{100 * q['accuracy']:.2f}",
            " / ".join(f"{100 * a:.1f}" for a in q["accuracy_by_seed"]),
            f"{3600 * q['device_hours']:.1f}", _num(q["predicted_mean_step_seconds"], 3),
            f"{q['measured_mean_step_seconds']:.3f}", _num(q["measured_over_predicted"], 2),
            "yes" if q["pareto"] else "",
        ])  # fmt: skip
    lines.append(
        report.markdown_table(
            [
                "layers",
                "chosen as",
                "accuracy %",
                "by seed",
                "device-s (incl. selection)",
                "predicted step s",
                "measured step s",
                "measured / predicted",
                "Pareto",
            ],
            rows,
        )  # fmt: skip
    )
    pr = p["prediction"]
    lines += [
        f"Predicted against measured step time: median error {100 * pr['median_abs_error']:.1f} %, largest "
        f"{100 * pr['max_abs_error']:.1f} %, {pr['within_10_percent']} of {pr['plans']} plans within 10 %."
        if pr
        else "No cost profile was made (--no-profile): no predicted step times.",
        "",
    ]
    lines += epoch_cost_table(p)
    lines += [
        "## Per k: guided minus each simpler plan",
        "",
    ]
    rows = []
    for row in p["per_k"]:
        for c in row["contrasts"]:
            same = " (same plan)" if c["same_plan"] else ""
            rows.append([row["k"], str(row["guided"]), f"{c['against']} {c['layers'] or ''}{same}", _ci(c)])
        pct = row["percentile_among_random"]
        rows.append([row["k"], str(row["guided"]), "percentile among the random plans",
                     "n/a" if pct is None else f"{pct:.0f}"])  # fmt: skip
    lines.append(report.markdown_table(["k", "guided", "against", "difference [95 % CI]"], rows))
    lines += ["## Per cost bucket (terciles of device-hours, selection included)", ""]
    rows = []
    for b in p["per_bucket"]:
        lo, hi = b["device_hours_range"]
        span = f"{3600 * lo:.0f}-{3600 * hi:.0f} s ({b['plans']} plans)"
        if not b["guided"]:
            rows.append([span, "no guided plan", "", "", ""])
        for g in b["guided"]:
            pooled = g.get("against_others_pooled")
            best = g.get("against_best_other")
            pct = g["percentile_among_random"]
            rows.append([
                span, str(g["guided"]), _ci(pooled) if pooled else "n/a",
                f"{best['layers']}: {_ci(best)}" if best else "n/a", "n/a" if pct is None else f"{pct:.0f}",
            ])  # fmt: skip
    lines.append(
        report.markdown_table(
            [
                "bucket",
                "guided",
                "vs the others in it (pooled)",
                "vs the best other",
                "percentile among random",
            ],
            rows,
        )
    )
    if p["protocol"]:
        lines += ["## The fast defaults against the paper's protocol", ""]
        rows = [
            [str(q["layers"]), q["prefix_cache"], f"{100 * q['fast_accuracy']:.2f}",
             f"{100 * q['protocol_accuracy']:.2f}", _ci(q["fast_minus_protocol"]),
             f"{3600 * q['fast_device_hours']:.1f}", f"{3600 * q['protocol_device_hours']:.1f}",
             f"{q['fast_device_hours'] / q['protocol_device_hours']:.2f}"]
            for q in p["protocol"]
        ]  # fmt: skip
        lines.append(
            report.markdown_table(
                [
                    "layers",
                    "prefix cache",
                    "fast acc %",
                    "protocol acc %",
                    "fast - protocol",
                    "fast device-s",
                    "protocol device-s",
                    "ratio",
                ],
                rows,
            )  # fmt: skip
        )
    h = p["host_load"]
    lines += [
        f"Other processes' CPU share during the runs: median {h['others_cpu_share_median']:.2f}, largest "
        f"{h['others_cpu_share_max']:.2f}.",
        "",
    ]
    return "\n".join(lines) + report.image(folder, "frontier.png", "metric against device-hours")


def plot(p: dict[str, Any], path: Path) -> Path:
    from .analysis.plots import _figure, _save_atomic

    fig = _figure(10, height=5.0)
    ax = fig.add_subplot()
    style = {
        "scores": ("tab:orange", "*", 14), "budget": ("tab:purple", "D", 8), "last": ("tab:green", "^", 8),
        "first": ("tab:red", "v", 8), "uniform": ("tab:brown", "s", 7), "random": ("tab:gray", "o", 6),
        "all": ("black", "X", 10),
    }  # fmt: skip
    seen = set()
    for q in p["points"]:
        main = next(
            s
            for s in ("scores", "budget", "all", "last", "first", "uniform", "random")
            if s in q["strategies"]
        )
        color, marker, size = style[main]
        x, y = 3600 * q["device_hours"], 100 * q["accuracy"]
        label = None if main in seen else main
        ax.plot([x], [y], marker=marker, color=color, markersize=size, linestyle="none", label=label)
        seen.add(main)
        if main in ("scores", "budget", "all"):
            ax.annotate(str(q["layers"]), (3600 * q["device_hours"], 100 * q["accuracy"]), fontsize="x-small",
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
    front = sorted((q for q in p["points"] if q["pareto"]), key=lambda q: q["device_hours"])
    ax.plot([3600 * q["device_hours"] for q in front], [100 * q["accuracy"] for q in front], color="tab:blue",
            linewidth=1, label="Pareto front")  # fmt: skip
    ax.set(xlabel="device-seconds (training phases + selection)", ylabel="validation accuracy %",
           title=f"{p['model']['name']} on {p['task']['name']}: accuracy against cost")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save_atomic(fig, path)
