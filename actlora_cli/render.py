"""What the commands show: one function per artefact kind, each printing a stage's document to stdout.

Results go to stdout (``ui.out``) so they can be piped; progress and notes stay on stderr. The stages that run
under torchrun (probe, train, eval, ablate) show their result on rank 0 only. Every renderer is a
``@_result``: under --quiet it shows nothing, under --json it writes its document (the artefact the stage
wrote) as JSON instead. No torch here: the CLI imports this module before it knows whether a stage will run.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.table import Table

from . import ui
from .artifacts import SCHEMA_VERSION
from .config import Config, dump_yaml
from .selection import Plan


def _result(document: Callable[..., Any] | None = None) -> Callable:
    """A renderer of a command's result: shown unless quiet (--quiet, --json, a non-main rank); under --json
    ``document(*args)`` (by default the first argument) is written as the one JSON document instead."""

    def decorate(show: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(show)
        def render(*args: Any) -> None:
            if ui.json_output():
                ui.json_document(document(*args) if document else args[0])
            elif not ui.quiet():
                show(*args)

        return render

    return decorate


def _table(title: str, columns: dict[str, str]) -> Table:
    """A table of ``{column: justify}``, at least as wide as its title: a title naming a path would otherwise
    wrap inside the path over a narrow table."""
    table = Table(title=title, min_width=cell_len(title))
    for name, justify in columns.items():
        table.add_column(name, justify=justify)
    return table


def _value_table(title: str, metrics: dict[str, dict[str, float]]) -> Table:
    """A two-column table opening with one row per split and metric, as train and eval show them."""
    table = _table(title, {"": "left", "value": "right"})
    for split, values in metrics.items():
        for name, value in values.items():
            table.add_row(f"{split} {name}", f"{value:.4f}")
    return table


def markdown(text: str) -> None:
    """Markdown as written, bypassing the console: rich would wrap long table rows at the terminal width (or
    at 80 columns in a pipe) and break them as Markdown."""
    sys.stdout.write(text)


@_result(lambda report, text: {"kind": "comparison", "schema_version": SCHEMA_VERSION, **report})
def comparison(report: dict[str, Any], text: str) -> None:
    """compare's report: its Markdown (``text``); under --json the report as ``compare --out`` writes it."""
    markdown(text)


@_result()
def scores(doc: dict[str, Any], path: Path) -> None:
    """scores.json: each layer's raw statistic and normalised score, with a bar, then what the probe saw."""
    where = f" at {doc['site']}" if doc["site"] else ""
    table = _table(
        f"{doc['scorer']}{where}: {doc['model']['name']} on {doc['task']['name']}",
        {"layer": "right", "raw": "right", "score": "right", "": "left"},
    )
    for i, (raw, score) in enumerate(zip(doc["raw"], doc["scores"], strict=False)):
        shown = "undefined" if raw is None else f"{raw:.4g}"
        table.add_row(str(i), shown, f"{score:.3f}", "#" * round(20 * score))
    ui.out.print(table)
    t = doc["timings"]
    # probe.steps=auto: why it stopped where it did (files written before it lack these keys)
    why = {"resolved": "plan resolved", "cap": "the cap"}.get(doc.get("stop_reason", "fixed"))
    stopped = f" (auto: stopped at {why}, max {doc['max_steps']})" if why else ""
    ui.out.print(
        f"{doc['batches_seen']} batches{stopped}, {doc['examples_seen']} examples, "
        f"{doc['tokens_seen']} tokens in {t['probe_s']:.2f}s ({t['per_batch_ms']:.1f} ms/batch) -> {path}"
    )


@_result()
def selection(doc: dict[str, Any], path: Path) -> None:
    """selection.json: the ranking with scores and C(k), the chosen layers marked."""
    plan = Plan.from_doc(doc, str(path))
    layer_scores = doc["scores"]
    tau_shown = f", tau={plan.tau}" if plan.tau else ""
    how = plan.rule if plan.strategy in (None, "scores") else f"{plan.strategy} k"
    seed_shown = f", seed {plan.seed}" if plan.seed is not None else ""
    table = _table(
        f"layer plan ({how}): k={plan.k}{tau_shown}{seed_shown}",
        dict.fromkeys(("rank", "layer", "score", "C(k)", "selected"), "right"),
    )
    # an explicit plan made without scores has no ranking: its table lists the chosen layers only
    for position, layer in enumerate(plan.ranking or plan.layers):
        table.add_row(
            str(position + 1) if plan.ranking else "",
            str(layer),
            f"{layer_scores[layer]:.3f}" if layer_scores else "",
            f"{plan.cumulative_importance[position]:.3f}" if plan.cumulative_importance else "",
            "yes" if layer in plan.layers else "",
        )
    ui.out.print(table)
    coverage = "" if plan.coverage is None else f" (share of the score {plan.coverage:.3f})"
    ui.out.print(f"selected layers {plan.layers}{coverage} -> {path}")
    budget = doc.get("budget")
    if budget:
        ui.out.print(
            f"predicted {budget['predicted']['device_hours']:.6f} device-hours "
            f"({budget['share_of_lora_all']:.3f} of every layer's {budget['lora_all_device_hours']:.6f}; "
            f"budget {budget['limit_device_hours']:.6f}, {budget['search']} search)"
        )


@_result()
def served(doc: dict[str, Any], what: str) -> None:
    """predict / export: what was written where."""
    if what == "predict":
        ui.out.print(f"{doc['examples']} predictions -> {doc['output']} ({doc['seconds']} s)")
    else:
        ui.out.print(f"{doc['method']} model, merged, with its tokenizer -> {doc['dest']}")


@_result()
def costs(doc: dict[str, Any], path: Path) -> None:
    """costs.json: per lowest adapted layer, the step time and the prefix's share; every layer's step."""
    from .costmodel import CostModel

    model = CostModel.from_doc(doc)
    table = _table(
        f"step cost on {doc['device']}: {doc['method']} at batch {doc['batch_size']}, "
        f"{doc['batches']} batches x {doc['rounds']} rounds",
        dict.fromkeys(("plan", "step s", "measured s", "prefix fwd s", "round spread"), "right"),
    )
    s = doc["step_seconds"]
    for m, step in enumerate(s["lowest"]):
        table.add_row(
            f"{{{m}}}", f"{step:.4f}", f"{s['measured_lowest'][m]:.4f}",
            f"{doc['prefix_forward_seconds'][m]:.4f}", f"{doc['round_spread']['lowest'][m]:.3f}",
        )  # fmt: skip
    spread = doc["round_spread"]["all"]
    table.add_row("every layer", f"{s['all']:.4f}", f"{s['all']:.4f}", "", f"{spread:.3f}")
    ui.out.print(table)
    ui.out.print(
        f"each layer above the lowest adds {model.adapter:.4f} s; step(P) = step\\[min P] + (|P| - 1) x that "
        f"-> {path}"
    )


@_result()
def train_summary(doc: dict[str, Any], run_dir: Path) -> None:
    """train_summary.json: final metrics, trainable share and the cost account."""
    table = _value_table(
        f"train: {doc['method']} on {doc['model']['name']}, {doc['task']['name']}, "
        f"layers {doc['plan']['layers']}",
        doc["final_metrics"],
    )
    table.add_row(
        "trainable parameters", f"{doc['trainable_parameters']:,} ({100 * doc['trainable_share']:.3f}%)"
    )
    table.add_row("steps / epochs", f"{doc['steps']} / {doc['epochs']}")
    kept = doc.get("weights") or {}
    if kept.get("from") == "best":  # train.final_weights=best: the metrics above are that evaluation's
        table.add_row("weights kept", f"best: step {kept['step']}, {kept['metric']} {kept['value']:.4f}")
    table.add_row("samples/s", f"{doc['samples_per_second']}")
    ms = doc["mean_step_ms"]
    table.add_row(
        "step ms (fwd / bwd / opt)", f"{ms['forward']:.1f} / {ms['backward']:.1f} / {ms['optimizer']:.1f}"
    )
    table.add_row("device-hours", f"{doc['device_hours']:.5f} ({doc['device']} x{doc['world_size']})")
    if doc["peak_memory_mib"] is not None:  # None off CUDA
        table.add_row("peak memory MiB", f"{doc['peak_memory_mib']}")
    ui.out.print(table)
    ui.out.print(f"adapter -> {run_dir / 'adapter'}")


@_result()
def eval_result(doc: dict[str, Any], path: Path) -> None:
    """eval.json: metrics, then latency and throughput unmerged and merged (or why a mode was skipped)."""
    table = _value_table(
        f"eval: {doc['model']['name']} on {doc['task']['name']} ({doc['device']})", doc["metrics"]
    )
    timing = doc["timing"]
    for mode in ("unmerged", "merged"):
        tm = timing[mode]
        if "skipped" in tm:
            table.add_row(mode, tm["skipped"])
            continue
        table.add_row(
            f"latency ms/example p50 / p90 ({mode})",
            f"{tm['latency_ms_p50']:.3f} / {tm['latency_ms_p90']:.3f}",
        )
        table.add_row(f"throughput samples/s ({mode})", f"{tm['throughput_samples_per_s']:.1f}")
    if "time_to_first_token_ms_p50" in timing:  # batch 1; older eval.json: decoders only
        table.add_row(
            "time to first token ms p50 / p90",
            f"{timing['time_to_first_token_ms_p50']:.3f} / {timing['time_to_first_token_ms_p90']:.3f}",
        )
    ui.out.print(table)
    ui.out.print(f"-> {path}")


@_result()
def ablation(doc: dict[str, Any]) -> None:
    """ablation.json: per layer, the metric drop with each part's adapters off, and the importance."""
    parts = list(doc["drop"])
    table = _table(
        f"ablation: {doc['metric']} {doc['full_metric']:.4f} with every adapter on",
        dict.fromkeys(("layer", *(f"drop {p}" for p in parts), "importance (both)"), "right"),
    )
    for i in range(len(doc["drop"]["both"])):
        table.add_row(
            str(i), *(f"{doc['drop'][p][i]:+.4f}" for p in parts), f"{doc['importance']['both'][i]:.3f}"
        )
    ui.out.print(table)


@_result()
def sweep_plan(doc: dict[str, Any], out: Path) -> None:
    """A dry run's plan: what each point and each task's probe would run."""
    table = _table(
        f"sweep plan: {doc['total']} points in {out} (nothing written)",
        {"#": "right", "task": "left", "point": "left", "would run": "left"},
    )
    for i, p in enumerate(doc["points"], 1):
        table.add_row(str(i), p["task"], p["name"], p["action"])
    ui.out.print(table)
    for task, probe in doc["probes"].items():
        ui.out.print(f"probe {task}: {probe['action']} ({probe['folder']})")


@_result(
    lambda doc, out: {"kind": "sweep", "schema_version": SCHEMA_VERSION, **doc}
)  # as sweep.json holds it
def sweep(doc: dict[str, Any], out: Path) -> None:
    """sweep.json: one row per point, then each task's comparison (its Markdown, as written)."""
    columns = {"task": "left", "point": "left", "ran": "left", "metric": "left"}
    table = _table(
        f"sweep: {doc['total']} points in {out}",
        {**columns, "value": "right", "trainable params": "right", "step ms": "right"},
    )
    table.columns[1].no_wrap = True  # a point's name is its folder's: keep it whole
    for p in doc["points"]:
        table.add_row(
            p["task"],
            p["name"],
            p["action"],
            p["metric_name"],
            f"{p['metric']:.4f}",
            f"{p['trainable_parameters']:,}",
            f"{p['step_ms']:.1f}",
        )
    ui.out.print(table)
    for task, comparison in doc["comparisons"].items():
        note = f"\nNote: {comparison['note']}.\n" if comparison["note"] else ""
        markdown(f"\n## {task}\n{note}\n" + Path(comparison["markdown"]).read_text())


@_result(lambda out, name: json.loads((out / f"{name}.json").read_text()))
def study(out: Path, name: str) -> None:
    """A study's report: the <out>/<name>.md it wrote."""
    markdown((out / f"{name}.md").read_text())


@_result()
def data_manifest(manifest: dict[str, Any], root: Path) -> None:
    """The prepared sentiment data's manifest.json: examples per domain and split."""
    table = _table(
        f"packaged sentiment data in {root}", dict.fromkeys(("domain", "train", "validation"), "right")
    )
    for domain, counts in manifest["counts"].items():
        table.add_row(domain, str(counts["train"]), str(counts["validation"]))
    ui.out.print(table)


@_result()
def configs(rows: list[dict[str, str]]) -> None:
    """The shipped configs, one row each (``actlora configs list``)."""
    table = _table(
        "shipped configs (--config NAME)", dict.fromkeys(("name", "model", "task", "method", "k/tau"), "left")
    )
    for row in rows:
        table.add_row(row["name"], row["model"], row["task"], row["method"], row["rule"])
    ui.out.print(table)


@_result()
def copied(doc: dict[str, str]) -> None:
    """Where ``actlora configs copy`` put a shipped config."""
    ui.out.print(f"{doc['name']} -> {doc['path']}", markup=False, highlight=False)


@_result(lambda cfg: cfg.to_dict())
def resolved_config(cfg: Config) -> None:
    """A config as config.resolved.yaml holds it."""
    # verbatim: a value holding [brackets] (a path, a model name) would otherwise be read as rich markup
    ui.out.print(dump_yaml(cfg), end="", markup=False, highlight=False)
