"""The rank stage: ``scores.json`` (or an explicit list of layers) -> layer plan -> ``<run>/selection.json``;
and, for train, where a run's plan comes from."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from . import artifacts, runfolder, ui
from .config import Config, prefix_cache_on
from .costmodel import CostModel, RunShape, predict, within_budget
from .errors import ArtifactError, ConfigError, Problem
from .selection import (
    POSITIONAL,
    Plan,
    boundary,
    by_strategy,
    cheaper_at_a_tie,
    every_layer,
    explicit,
    scores_noise,
    select,
)


def _scores_path(cfg: Config):
    return cfg.run_dir / "scores.json"


def _selection_path(cfg: Config):
    return cfg.run_dir / "selection.json"


def _check_layer_count(cfg: Config, scores_doc: dict[str, Any]) -> None:
    """Scores for another depth than the configured model's make a plan of layers it lacks: refused here, from
    the model's config alone (no weights), when that config can be read; train checks against the model."""
    from .modeling import declared_layers

    layers = declared_layers(cfg.model)
    if layers is not None and len(scores_doc["scores"]) != layers:
        raise ArtifactError(
            Problem(
                str(_scores_path(cfg)),
                f"{len(scores_doc['scores'])} layer scores, but {cfg.model.name} has {layers} layers",
                "re-run `actlora probe` for this model, or point output_dir at the run made for it",
            )
        )


def _model_layers(cfg: Config) -> int:
    """The configured model's layer count, from its config (a plan by position without a probe)."""
    from .modeling import declared_layers

    layers = declared_layers(cfg.model)
    if layers is None:
        raise ArtifactError(
            Problem(
                str(_scores_path(cfg)),
                f"no scores, and the layer count of {cfg.model.name} cannot be read from its config here",
                "run `actlora probe` first, or name the layers with --layers",
            )
        )
    return layers


def read_scores(cfg: Config) -> dict[str, Any]:
    return artifacts.read_artifact(_scores_path(cfg), "scores", model_name=cfg.model.name)


def plan_from_scores(cfg: Config, scores_doc: dict[str, Any]) -> Plan:
    """The config's rule (rank.k with rank.strategy, rank.tau or rank.layers) applied to a scores document."""
    r = cfg.rank
    undefined = scores_doc.get("undefined_layers") or ()  # a scorer's undefined layers are ranked last
    if r.layers is not None:
        return explicit(r.layers, scores_doc["scores"], undefined)
    if r.budget is not None or r.budget_hours is not None:
        return budget_plan(cfg, scores_doc)[0]
    if r.k is None and r.tau is None:
        raise ConfigError(
            [
                Problem(
                    "rank.k / rank.tau",
                    "no selection rule given",
                    "pass --k N, --k all, --tau T or --layers 3,4,5",
                )
            ]
        )
    scores = scores_doc["scores"]
    if r.tau is not None:
        plan = select(scores, tau=r.tau, undefined=undefined)
    else:
        plan = by_strategy(r.strategy, r.k, len(scores), r.seed, scores, undefined)
    if r.tie_break == "cost" and plan.guided:
        plan = cheaper_at_a_tie(plan, scores, scores_doc.get("score_stderr"), scores_noise(scores_doc))
    return plan


def read_costs(cfg: Config) -> dict[str, Any]:
    path = cfg.run_dir / "costs.json"
    if not path.is_file():
        key = "rank.budget" if cfg.rank.budget is not None else "rank.budget_hours"
        raise ArtifactError(
            Problem(str(path), f"{key} needs the run's costs", "run `actlora profile` first (same config)")
        )
    return artifacts.read_artifact(path, "costs", model_name=cfg.model.name)


def run_shape(cfg: Config, costs_doc: dict[str, Any], world: int = 1) -> RunShape:
    """How the configured run spends its steps, from the step count per epoch the profile recorded."""
    t = cfg.train
    per_epoch = costs_doc["steps_per_epoch"]
    total = math.ceil(t.epochs * per_epoch)
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    return RunShape(total, per_epoch, prefix_cache_on(cfg), world)


def budget_plan(cfg: Config, scores_doc: dict[str, Any]) -> tuple[Plan, dict[str, Any]]:
    """rank.budget / rank.budget_hours: the plan of rank.k layers (any size without k) with the greatest total
    score whose predicted device-hours fit; and the record selection.json keeps of the choice."""
    r = cfg.rank
    costs = read_costs(cfg)
    model, shape = CostModel.from_doc(costs), run_shape(cfg, costs)
    scores = scores_doc["scores"]
    every = predict(model, list(range(len(scores))), shape)["device_hours"]
    limit = r.budget_hours if r.budget_hours is not None else r.budget * every
    k = r.k if isinstance(r.k, int) else None
    if k is not None and k > len(scores):
        raise ConfigError([Problem("rank.k", f"k={k} but the model has {len(scores)} layers", "")])
    found = within_budget(model, scores, shape, limit * 3600 / shape.world, k)
    key = "rank.budget" if r.budget is not None else "rank.budget_hours"
    if found is None:
        size = k or 1
        top = list(range(len(scores) - size, len(scores)))  # the top-most layers: the cheapest plan
        need = predict(model, top, shape)["device_hours"]
        raise ConfigError(
            [
                Problem(
                    key,
                    f"no plan of {size if k else 'any number of'} layer(s) fits {limit:.6f} predicted "
                    f"device-hours; the cheapest needs {need:.6f} ({need / every:.3f} of every layer's "
                    f"{every:.6f})",
                    "raise the budget" + (" or lower rank.k" if k else ""),
                )
            ]
        )
    layers, _, search = found
    undefined = scores_doc.get("undefined_layers") or ()
    plan = explicit(layers, scores, undefined)
    plan = replace(plan, rule="budget", strategy="scores")
    predicted = predict(model, layers, shape)
    record = {
        "limit_device_hours": round(limit, 6),
        "fraction": r.budget,
        "lora_all_device_hours": every,
        "predicted": predicted,
        "share_of_lora_all": round(predicted["device_hours"] / every, 4) if every else None,
        "search": search,
        "costs_hash": artifacts.file_hash(cfg.run_dir / "costs.json"),
    }
    return plan, record


def resolve_plan(cfg: Config, num_layers: int) -> Plan:
    """The run's plan when train is given none, and where it came from. A rule that needs no scores wins
    (rank.layers, k='all', a plan by position); then the run's selection.json (made by ``actlora rank``);
    then the config's k or tau applied to the run's scores.json."""
    if cfg.rank.layers is not None:
        plan, source = explicit(cfg.rank.layers), "rank.layers"
    elif cfg.rank.k == "all":
        plan, source = every_layer(num_layers), "all layers"
    elif cfg.rank.strategy in POSITIONAL:  # chosen by position: no scores needed
        r = cfg.rank
        plan, source = by_strategy(r.strategy, r.k, num_layers, r.seed), f"rank.strategy={r.strategy}"
    elif _selection_path(cfg).is_file():
        plan, source = read_selection(cfg), str(_selection_path(cfg))
    elif cfg.rank.k is None and cfg.rank.tau is None:
        raise ArtifactError(
            Problem(
                str(_selection_path(cfg)),
                "no layer plan",
                "run `actlora probe` and `actlora rank`, or pass --k all or --layers 3,4,5",
            )
        )
    else:
        return ranked_now(cfg, num_layers)
    plan.check_fits(num_layers, source)
    return replace(plan, source=source)


def ranked_now(cfg: Config, num_layers: int | None = None) -> Plan:
    """The config's k or tau applied to the run's scores.json now, whatever selection.json says: what
    ``train --k 3`` means."""
    plan = plan_from_scores(cfg, read_scores(cfg))
    source = f"{_scores_path(cfg)} (k={cfg.rank.k}, tau={cfg.rank.tau})"
    if num_layers is not None:
        plan.check_fits(num_layers, source)
    return replace(plan, source=source)


def read_selection(cfg: Config) -> Plan:
    """The run's selection.json, checked to have been made from the run's current scores.json."""
    path, scores_path = _selection_path(cfg), _scores_path(cfg)
    doc = artifacts.read_artifact(path, "selection", model_name=cfg.model.name)
    made_from = doc.get("scores_hash")
    if made_from is not None and scores_path.is_file() and made_from != artifacts.file_hash(scores_path):
        raise ArtifactError(
            Problem(
                str(path),
                "made from other scores than the run's scores.json (it was probed again)",
                "re-run `actlora rank`, or pass --k/--tau to rank on the fly",
            )
        )
    return Plan.from_doc(doc, str(path))


@runfolder.exclusive
def run_rank(cfg: Config) -> dict[str, Any]:
    """Choose the layers and write ``selection.json``; returns the document. The rule is the config's: k (by
    rank.strategy) or tau over the run's ``scores.json``, or explicit ``rank.layers``. A plan by position
    (last, first, uniform, random) or by name needs no scores; with them, its ranking and share of the score
    are recorded."""
    r = cfg.rank
    scoreless = r.layers is not None or (r.strategy in POSITIONAL and r.k != "all")
    scores_doc = read_scores(cfg) if not scoreless or _scores_path(cfg).is_file() else None
    if scores_doc is not None:
        _check_layer_count(cfg, scores_doc)
        plan = plan_from_scores(cfg, scores_doc)
    elif r.layers is not None:
        plan = explicit(r.layers)
    else:
        plan = by_strategy(r.strategy, r.k, _model_layers(cfg), r.seed)
    source = scores_doc or {}
    payload = {
        **plan.to_doc(),
        "scores": source.get("scores"),
        "scorer": source.get("scorer"),
        "site": source.get("site"),
        "model": source.get("model", {"name": cfg.model.name}),
        "task": source.get("task", {"name": cfg.task.name}),
        "scores_hash": None if scores_doc is None else artifacts.file_hash(_scores_path(cfg)),
        "boundary": _boundary(plan, scores_doc),
        "budget": budget_plan(cfg, scores_doc)[1] if plan.rule == "budget" and scores_doc else None,
    }
    return artifacts.finish_stage(cfg, "selection", payload)


def _boundary(plan: Plan, scores_doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A guided plan's boundary against the probe's noise (selection.boundary), warned on when within it."""
    if scores_doc is None or not plan.guided:
        return None
    stderr = scores_doc.get("score_stderr")
    edge = boundary(plan.k, scores_doc["scores"], stderr, plan.ranking, scores_noise(scores_doc))
    if edge is None:
        return None
    # rank.tie_break=cost took the first layer out instead of the last in: say so
    edge["swapped_for_cost"] = edge["first_out"] in plan.layers and edge["last_in"] not in plan.layers
    if edge["swapped_for_cost"]:
        ui.note(
            f"note: rank.tie_break=cost took layer {edge['first_out']} instead of layer {edge['last_in']}: "
            "the probe cannot tell them apart, and the higher one costs no more"
        )
    elif edge["within_noise"]:
        ui.warn(
            f"the plan's boundary lies within the probe's noise: layer "
            f"{edge['last_in']} is in and layer {edge['first_out']} out, {edge['gap']:.4f} apart against a "
            f"standard error of {edge['noise']:.4f} for the difference; another probe could swap them "
            "(more probe.steps narrow it; rank.tie_break=cost takes the cheaper of the two)"
        )
    return edge
