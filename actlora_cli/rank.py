"""The rank stage: ``scores.json`` -> layer plan -> ``<run>/selection.json``."""

from __future__ import annotations

from typing import Any

from . import artifacts
from .config import Config
from .errors import ArtifactError, ConfigError, Problem
from .selection import Plan, select


def plan_from_scores(cfg: Config, scores_doc: dict[str, Any]) -> Plan:
    if cfg.rank.k is None and cfg.rank.tau is None:
        raise ConfigError(
            [Problem("rank.k / rank.tau", "no selection rule given", "pass --k N, --k all or --tau T")]
        )
    return select(scores_doc["scores"], k=cfg.rank.k, tau=cfg.rank.tau)


def selection_payload(
    cfg: Config, scores_doc: dict[str, Any], plan: Plan, scores_hash: str
) -> dict[str, Any]:
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


def resolve_plan(cfg: Config, num_layers: int, rule_from_flags: bool) -> tuple[Plan, str]:
    """Which layers get LoRA, and where that came from.

    k='all' needs no scores. A --k/--tau given to ``train`` ranks on the fly from scores.json; otherwise the
    run's selection.json (from ``actlora rank``) is used, or, when there is none, the config's rule applied
    to scores.json.
    """
    if cfg.rank.k == "all":
        return select([1.0] * num_layers, k="all"), "all layers"
    selection_path = cfg.run_dir / "selection.json"
    scores_path = cfg.run_dir / "scores.json"
    if not rule_from_flags and selection_path.is_file():
        doc = artifacts.read_artifact(selection_path, "selection", model_name=cfg.model.name)
        if scores_path.is_file() and doc.get("scores_hash") not in (None, artifacts.file_hash(scores_path)):
            raise ArtifactError(
                Problem(
                    str(selection_path),
                    "made from other scores than the run's scores.json (it was probed again)",
                    "re-run `actlora rank`, or pass --k/--tau to rank on the fly",
                )
            )
        plan = Plan(
            doc["layers"], doc["k"], doc["tau"], doc["rule"], doc["ranking"], doc["cumulative_importance"]
        )
        return plan, str(selection_path)
    if not scores_path.is_file() and cfg.rank.k is None and cfg.rank.tau is None:
        raise ArtifactError(
            Problem(
                str(selection_path),
                "no layer plan",
                "run `actlora probe` and `actlora rank`, or pass --k all",
            )
        )
    scores = artifacts.read_artifact(scores_path, "scores", model_name=cfg.model.name)
    return plan_from_scores(cfg, scores), f"{scores_path} (k={cfg.rank.k}, tau={cfg.rank.tau})"


def run_rank(cfg: Config) -> dict[str, Any]:
    """Read the run's ``scores.json``, choose the layers, write ``selection.json``; returns the document."""
    path = cfg.run_dir / "scores.json"
    scores_doc = artifacts.read_artifact(path, "scores", model_name=cfg.model.name)
    plan = plan_from_scores(cfg, scores_doc)
    doc = artifacts.write_artifact(
        cfg.run_dir / "selection.json",
        "selection",
        selection_payload(cfg, scores_doc, plan, artifacts.file_hash(path)),
    )
    artifacts.write_resolved(cfg)
    return doc
