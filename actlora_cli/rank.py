"""The rank stage: ``scores.json`` -> layer plan -> ``<run>/selection.json``."""

from __future__ import annotations

from typing import Any

from . import artifacts
from .config import Config
from .errors import ConfigError, Problem
from .probe import write_resolved
from .selection import Plan, select


def plan_from_scores(cfg: Config, scores_doc: dict[str, Any]) -> Plan:
    if cfg.rank.k is None and cfg.rank.tau is None:
        raise ConfigError([Problem("rank.k / rank.tau", "no selection rule given", "pass --k N, --k all or --tau T")])
    return select(scores_doc["scores"], k=cfg.rank.k, tau=cfg.rank.tau)


def selection_payload(cfg: Config, scores_doc: dict[str, Any], plan: Plan, scores_hash: str) -> dict[str, Any]:
    return {
        "layers": plan.layers,
        "k": plan.k,
        "tau": plan.tau,
        "rule": plan.rule,
        "ranking": plan.ranking,
        "cumulative_importance": plan.curve,
        "coverage": plan.curve[plan.k - 1],
        "scores": scores_doc["scores"],
        "scorer": scores_doc["scorer"],
        "site": scores_doc["site"],
        "model": scores_doc["model"],
        "task": scores_doc["task"],
        "scores_hash": scores_hash,
        "provenance": artifacts.provenance(cfg.hash()),
    }


def run_rank(cfg: Config) -> dict[str, Any]:
    """Read the run's ``scores.json``, choose the layers, write ``selection.json``; returns the document."""
    path = cfg.run_dir / "scores.json"
    scores_doc = artifacts.read_artifact(path, "scores", model_name=cfg.model.name)
    plan = plan_from_scores(cfg, scores_doc)
    doc = artifacts.write_artifact(
        cfg.run_dir / "selection.json", "selection", selection_payload(cfg, scores_doc, plan, artifacts.file_hash(path))
    )
    write_resolved(cfg)
    return doc
