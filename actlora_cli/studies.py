"""The validity studies of the Act-LoRA paper (sections 7.2-7.5), run on any model: each probes as many times
as it needs through the probe stage, then hands the score vectors to ``analysis`` and writes
``<out>/<study>.json``, ``<study>.md`` (with its plots), ``<study>.html`` (one self-contained page) and PNG
plots. ``render_reports`` writes the Markdown and HTML again from the JSON alone (``actlora report``).

- stability: the same scorer over N probe seeds: pairwise Kendall tau, top-k Jaccard (Tables 9, 10);
- tasks: one scorer over several tasks: rank-correlation matrix (Fig. 11);
- correlation: several scorers against ablation importance: Pearson, Spearman, Kendall, cosine (Table 11);
- thresholds: the k needed for tau = 25/50/75/100% (Table 8), and the C(k) curve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts, ui
from .analysis import agreement, correlation, plots, report, stability, thresholds
from .config import Config, read_utf8
from .errors import ActloraError, Problem
from .selection import select


def probe_scores(cfg: Config, out: Path, name: str, seed: int) -> dict[str, Any]:
    """One probe into ``out/scores/<name>``; the head (new, random) is seeded too, which gradient-based
    scorers see: that is part of their seed dependence. A probe an interrupted study already made there from
    the same config is reused, so running the study again resumes it."""
    import torch  # here, not above: writing the reports again from JSON (render_reports) needs no torch

    from .probe import run_probe

    probe_cfg = cfg.with_overrides({"output_dir": str(out / "scores" / name), "probe.seed": seed})
    done = artifacts.made_from(probe_cfg.run_dir / "scores.json", "scores", probe_cfg)
    if done is not None:
        ui.note(f"reusing {probe_cfg.run_dir / 'scores.json'} (made from the same config)")
        return done
    torch.manual_seed(seed)
    return run_probe(probe_cfg)


def study_stability(
    cfg: Config, scorers: list[str], seeds: list[int], ks: list[int], out: Path
) -> dict[str, Any]:
    results = {}
    for scorer in scorers:
        by_seed = []
        for seed in seeds:
            ui.note(f"stability: {scorer}, seed {seed}")
            by_scorer = cfg.with_overrides({"probe.scorer": scorer})
            doc = probe_scores(by_scorer, out, f"{scorer}_seed{seed}", seed)
            by_seed.append(doc["scores"])
        result = stability.seed_stability(by_seed, ks)
        results[scorer] = {**result, "scores_by_seed": by_seed}
        plots.plot_seed_scores(
            by_seed, out / f"stability_{scorer}.png", title=f"{scorer}: scores over {len(seeds)} seeds"
        )
    payload = {"seeds": seeds, "ks": ks, "results": results, **_context(cfg)}
    if len(scorers) >= 2:  # do the scorers agree with each other? (their seed-averaged scores)
        means = {s: [float(v) for v in np.mean(results[s]["scores_by_seed"], axis=0)] for s in scorers}
        payload["scorer_agreement"] = {**agreement.scorer_agreement(means, ks), "mean_scores": means}
    report.write_study(out, "stability", payload, study_markdown("stability", payload, out))
    return payload


def study_tasks(cfg: Config, tasks: list[str], out: Path) -> dict[str, Any]:
    by_task = {}
    for task in tasks:
        ui.note(f"tasks: {task}")
        doc = probe_scores(cfg.with_overrides({"task.name": task}), out, f"task_{task}", cfg.probe.seed)
        by_task[task] = doc["scores"]
    result = agreement.task_agreement(by_task)
    plots.plot_heatmap(by_task, out / "tasks_scores.png", f"{cfg.probe.scorer} scores by task", ylabel="task")
    payload = {"tasks": tasks, "scores_by_task": by_task, "results": result, **_context(cfg)}
    report.write_study(out, "tasks", payload, study_markdown("tasks", payload, out))
    return payload


def study_correlation(cfg: Config, scorers: list[str], out: Path) -> dict[str, Any]:
    """``cfg.output_dir`` is a run trained with LoRA on every layer, with ablation.json (actlora ablate).

    Per ablated part (each target, e.g. Q and V, and 'both'), every scorer's vector is correlated with that
    part's ablation importance (Table 11). A scorer that measures projections (the gradient scorers, the
    weight delta) gives its reading of that projection alone against the projection's ablation, and its
    per-layer sum against 'both'; the activation norm and CKA read one value per layer (the attention
    block's output, Act-LoRA L242), and that one vector is correlated with each projection's ablation, as the
    paper's Table 11 does (L437: activation norms against "both Q and V projections"). ``vectors`` in the
    result says which was used. Fig. 12's heatmaps: layers x metrics, one per projection."""
    ablation = artifacts.read_artifact(cfg.run_dir / "ablation.json", "ablation", model_name=cfg.model.name)
    by_scorer, by_target = {}, {}
    for scorer in scorers:
        ui.note(f"correlation: {scorer}")
        extra = {"probe.adapter": str(cfg.run_dir / "adapter")} if scorer == "weight_delta" else {}
        doc = probe_scores(
            cfg.with_overrides({"probe.scorer": scorer, **extra}), out, f"corr_{scorer}", cfg.probe.seed
        )
        by_scorer[scorer] = doc["scores"]
        by_target[scorer] = doc.get("scores_by_target") or {}
    results, vectors = {}, {}
    for part, reference in ablation["importance"].items():
        vectors[part] = {s: "per projection" if part in by_target[s] else "per layer" for s in scorers}
        chosen = {s: by_target[s][part] if part in by_target[s] else by_scorer[s] for s in scorers}
        results[part] = correlation.correlate_with_reference(chosen, reference)
        if part != "both":  # Fig. 12: one heatmap per projection, layers x metrics
            columns = {**chosen, f"ablation ({part})": reference}
            plots.plot_heatmap(
                {f"layer {i}": [values[i] for values in columns.values()] for i in range(len(reference))},
                out / f"correlation_heatmap_{part}.png",
                f"{part} projection: layer importance by metric (min-max) and by ablation",
                xlabel="metric",
                ylabel="layer",
                column_labels=list(columns),
            )
    plots.plot_heatmap(
        {**by_scorer, "ablation (q+v)": ablation["importance"]["both"]},
        out / "correlation_heatmap.png",
        "layer importance by scorer (min-max) and by ablation",
    )
    payload = {
        "scores": by_scorer,
        "scores_by_target": {s: t for s, t in by_target.items() if t},
        "vectors": vectors,
        "ablation": ablation["importance"],
        "ablation_drop": ablation["drop"],
        "results": results,
        **_context(cfg),
    }
    report.write_study(out, "correlation", payload, study_markdown("correlation", payload, out))
    return payload


def study_thresholds(cfg: Config, out: Path, taus: list[float]) -> dict[str, Any]:
    scores = artifacts.read_artifact(cfg.run_dir / "scores.json", "scores", model_name=cfg.model.name)
    table = thresholds.threshold_table(scores["scores"], taus)
    plots.plot_cumulative(scores["scores"], taus, out / "thresholds_curve.png")
    k = cfg.rank.k if isinstance(cfg.rank.k, int) else table[len(table) // 2]["k"]
    plots.plot_layer_scores(
        scores["scores"],
        select(scores["scores"], k=k).layers,
        out / "layer_scores.png",
        f"{scores['scorer']} at {scores['site']}: top-{k} marked",
    )
    payload = {"scores": scores["scores"], "table": table, **_context(cfg)}
    report.write_study(out, "thresholds", payload, study_markdown("thresholds", payload, out))
    return payload


def study_markdown(name: str, result: dict[str, Any], folder: Path) -> str:
    """A study's Markdown from its result (the JSON's ``result``) alone, with the plots found in ``folder``:
    what the study writes, and what ``render_reports`` writes again."""
    if name == "stability":
        seeds = len(result["seeds"])
        md = "\n".join(
            f"### {scorer}\n\n"
            + stability.markdown(r, label=scorer)
            + report.image(folder, f"stability_{scorer}.png", f"{scorer}: scores over {seeds} seeds")
            for scorer, r in result["results"].items()
        )
        if "scorer_agreement" in result:
            md += "\n### agreement between scorers (scores averaged over the seeds)\n\n" + agreement.markdown(
                result["scorer_agreement"], label="Scorer"
            )
        return md
    if name == "tasks":
        return agreement.markdown(result["results"]) + report.image(
            folder, "tasks_scores.png", "scores by task"
        )
    if name == "correlation":
        parts = []
        for part, r in result["results"].items():
            how = result.get("vectors", {}).get(part)
            vectors = (
                "\nScorer vectors: " + "; ".join(f"{s} {v}" for s, v in how.items()) + "\n" if how else ""
            )
            image = report.image(
                folder,
                f"correlation_heatmap_{part}.png",
                f"{part} projection: importance by metric and by ablation",
            )
            parts.append(f"### ablating {part}\n\n" + correlation.markdown(r) + vectors + image)
        return "\n".join(parts) + report.image(
            folder, "correlation_heatmap.png", "layer importance by scorer (min-max) and by ablation"
        )
    if name == "thresholds":
        return (
            thresholds.markdown(result["table"])
            + report.image(folder, "thresholds_curve.png", "cumulative importance C(k)")
            + report.image(folder, "layer_scores.png", "layer scores, the top-k marked")
        )
    if name == "frontier":
        from .frontier import markdown

        return markdown(result, folder)
    raise ActloraError(
        Problem(f"study '{name}'", "no such study", "stability, tasks, correlation, thresholds or frontier")
    )


def render_reports(folder: Path) -> list[Path]:
    """The Markdown and HTML of every report in ``folder`` written again from its JSON (each study, and each
    comparison of ``actlora compare --out``), linking the plots already there; nothing is re-run or
    re-plotted. Returns the files written."""
    from . import html_report
    from .compare import write_pages

    folder = Path(folder)
    written: list[Path] = []
    for path in sorted(folder.glob("*.json")):
        try:
            kind = json.loads(read_utf8(path)).get("kind")
        except (ValueError, OSError, AttributeError):
            continue  # not an artefact: not a report either
        if kind == "study":
            doc = artifacts.read_artifact(path, "study")
            md_path = path.with_suffix(".md")
            md = study_markdown(doc["study"], doc["result"], folder)
            md = md if md.endswith("\n") else md + "\n"
            artifacts.atomic_write_text(md_path, md)
            title = report.study_title(doc["study"], doc["result"])
            written += [md_path, html_report.write(md_path, md, title)]
        elif kind == "comparison":
            written += write_pages(artifacts.read_artifact(path, "comparison"), path)
    if not written:
        raise ActloraError(
            Problem(
                str(folder),
                "holds no study or comparison JSON",
                "give the --out folder of `actlora study ...`, or the folder of `actlora compare --out`",
            )
        )
    return written


def _context(cfg: Config) -> dict[str, Any]:
    return {
        "model": cfg.model.name,
        "task": cfg.task.name,
        "probe": cfg.probe.model_dump(),
        "provenance": artifacts.provenance(cfg.hash()),
    }
