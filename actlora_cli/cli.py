"""The ``actlora`` command line: thin commands over stage functions, shared option aliases, and one place
that turns known errors into a message and an exit code (2 bad input, 3 diverged, 130 interrupted). Each
command reads options -> config -> stage -> render; what it shows is in render.py, and every command takes
--quiet and --json (output.py).

Stages are imported inside the commands so that ``--help`` and config errors answer without loading torch.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from . import render, ui
from .config import CLEAR, Config, load_config, parse_list
from .errors import ActloraError, ConfigError, Problem
from .output import JsonOpt, QuietOpt, Typer

app = Typer(
    name="actlora",
    help=(
        "Activation-guided layer selection for LoRA.\n\n"
        "Stages share one YAML config and pass JSON files through the run folder (output_dir):\n\n"
        "  actlora probe --config configs/minilm_movies.yaml        -> scores.json\n\n"
        "  actlora rank  --config configs/minilm_movies.yaml --k 3  -> selection.json\n\n"
        "  actlora train --config configs/minilm_movies.yaml        -> adapter/, train_summary.json\n\n"
        "  actlora eval  --config configs/minilm_movies.yaml        -> eval.json\n\n"
        "Without --config, $ACTLORA_CONFIG or the built-in offline default (packaged MiniLM on movie "
        "sentences) is used."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = Typer(help="Offline data: fetch and prepare the packaged sentiment tasks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
study_app = Typer(
    help="The validity studies (paper sections 7.2-7.5): each writes <out>/<study>.json, .md and PNG plots.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")
configs_app = Typer(
    help="The shipped configs (packaged with actlora): list them, copy one to edit; --config takes a name.",
    no_args_is_help=True,
)
app.add_typer(configs_app, name="configs")

# Shared option aliases: every command spells a setting the same way.
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config: a path, or a shipped config's name (actlora configs list).",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override any key: --set train.lr=1e-4 --set lora.targets=\\[q,k,v]. Repeatable."
    ),
]
OutputOpt = Annotated[str | None, typer.Option("--output-dir", "-o", help="Run folder (output_dir).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of this stage (probe.seed / train.seed).")]
StepsOpt = Annotated[
    str | None,
    typer.Option("--steps", help="S: probe mini-batches, or auto: until the plan is resolved (probe.steps)."),
]
SiteOpt = Annotated[
    str | None, typer.Option("--site", help="Probe site: post_attn, pre_attn or block_out (probe.site).")
]
KOpt = Annotated[
    str | None, typer.Option("--k", help="Adapt the top-k layers; 'all' = every layer (rank.k).")
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers", help="An explicit plan: comma-separated layer indices, e.g. 3,4,5 (rank.layers)."
    ),
]
StrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="Which k layers: scores (the probe's top-k), inverse (its bottom-k), or by position with no "
        "probe: last, first, uniform, random (rank.strategy).",
    ),
]
RankSeedOpt = Annotated[int | None, typer.Option("--seed", help="The random strategy's seed (rank.seed).")]
TauOpt = Annotated[
    float | None,
    typer.Option("--tau", help="Choose k as the least k with C(k) >= tau, 0 < tau <= 1 (rank.tau)."),
]
BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--budget",
        help="Select within a cost budget: the greatest total score whose predicted device-hours are at most "
        "this share of LoRA on every layer's (needs <run>/costs.json from `actlora profile`); --k fixes the "
        "plan's size (rank.budget).",
    ),
]
BudgetHoursOpt = Annotated[
    float | None,
    typer.Option("--budget-hours", help="As --budget, in predicted device-hours (rank.budget_hours)."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks (also ACTLORA_DEBUG=1).")]


@contextlib.contextmanager
def _handled(debug: bool, resume: str | None = None):
    """Known errors -> their problems on stderr and their exit code (2 bad input, 3 diverged); Ctrl-C -> 130
    and the command that continues the work (``resume``: 'flag' adds --resume, 'rerun' repeats the command);
    unknown errors keep their traceback (exit 1)."""
    try:
        yield
    except KeyboardInterrupt:
        ui.tell("[bold red]interrupted[/]")  # by rank 0: under torchrun every rank is interrupted
        if resume is not None:
            args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
            again = "actlora " + shlex.join(args) + (" --resume" if resume == "flag" else "")
            ui.tell(f"  continue from the last checkpoint with: {again}")
        raise typer.Exit(130) from None  # 128 + SIGINT, as shells report it
    except ActloraError as exc:
        if debug or os.environ.get("ACTLORA_DEBUG") == "1":
            raise
        title = "invalid config" if isinstance(exc, ConfigError) else "error"
        if exc.source:
            title += f" ({exc.source})"
        ui.err.print(f"[bold red]{escape(title)}[/]")
        for problem in exc.problems:
            # escaped: a problem's text is not markup (pip install 'actlora[wandb]' must print whole)
            ui.err.print(
                f"  [bold]{escape(problem.where)}[/]: {escape(problem.what)}"
                + (f"\n    fix: {escape(problem.fix)}" if problem.fix else "")
            )
        # 2 (as click's usage errors) for bad input, 3 for a diverged run: a script can tell "fix the input"
        # and "retry with other settings" from a crash (1, with a traceback)
        raise typer.Exit(exc.exit_code) from None
    finally:
        # a stage under torchrun leaves a process group: end it even on error (torch warns of one left at
        # exit). Only a stage that ran can have made one; importing torch to find none slows config errors.
        if f"{__package__}.distributed" in sys.modules:
            from .distributed import teardown

            teardown()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("actlora")
        except PackageNotFoundError:  # run from a clone that was never installed
            from . import __version__ as number
        typer.echo(f"actlora {number}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print actlora's version and exit."),
    ] = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    # --quiet and --json before the command (actlora --json rank) as after it (actlora rank --json)
    ctx.with_resource(ui.output_mode(quiet=quiet, as_json=json_output))


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(part) for part in parse_list(text)]
    except ValueError:
        problem = Problem(flag, f"expected comma-separated numbers, got '{text}'", "e.g. 2,4")
        raise ConfigError([problem]) from None


def _parse_k(k: str) -> int | str:
    if k == "all":
        return k
    try:
        return int(k)
    except ValueError:
        problem = Problem("--k", f"expected a whole number or 'all', got '{k}'", "e.g. --k 3")
        raise ConfigError([problem]) from None


def _rule_values(k: str | None, tau: float | None, layers: str | None) -> dict[str, Any]:
    """--k, --tau and --layers as typed config values. They are one rule, so a flag given replaces the file's
    whole rule: the two others are cleared (CLEAR), where an absent flag (None) leaves the file alone."""
    given = {
        "rank.k": None if k is None else _parse_k(k),
        "rank.tau": tau,
        "rank.layers": None if layers is None else _numbers(layers, int, "--layers"),
    }
    if all(v is None for v in given.values()):
        return {}
    return {key: CLEAR if value is None else value for key, value in given.items()}


def _budget_values(budget: float | None, hours: float | None) -> dict[str, Any]:
    """--budget / --budget-hours: the rule becomes the budget (with the file's or --k's k, if any): the file's
    tau, layers and other budget are cleared."""
    if budget is None and hours is None:
        return {}
    return {
        "rank.budget": CLEAR if budget is None else budget,
        "rank.budget_hours": CLEAR if hours is None else hours,
        "rank.tau": CLEAR,
        "rank.layers": CLEAR,
    }


def _config(config: Path | None, overrides: list[str] | None, values: dict[str, Any]) -> Config:
    """The resolved config: defaults < file (--config, else $ACTLORA_CONFIG) < --set < typed flags."""
    # $ACTLORA_CONFIG lets a job script set the config once for a chain of stages (probe, rank, train, eval)
    if config is None and os.environ.get("ACTLORA_CONFIG"):
        config = Path(os.environ["ACTLORA_CONFIG"])
    # typed flags go in as values, not as --set strings: a value is never re-parsed as YAML ('1e-4', '3,4')
    return load_config(config, overrides, values)


def _quiet_libraries() -> None:
    """Silence transformers' logging and progress bars: the stages report their own progress on stderr, and
    stdout carries results only. Called after _config, so a config error answers before transformers loads."""
    import warnings

    from transformers.utils import logging as hf_logging

    # deprecation chatter between peft and transformers versions is not the user's business
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@app.command(short_help="Score every layer over S probe batches -> <run>/scores.json.")
def probe(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    steps: StepsOpt = None,
    site: SiteOpt = None,
    seed: SeedOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="probe.batch_size")] = None,
    debug: DebugOpt = False,
) -> None:
    """Score every layer: forward S batches of the training split through the frozen model with hooks at the
    probe site, and write per-layer raw statistics and min-max normalised scores to <run>/scores.json."""
    with _handled(debug):
        cfg = _config(
            config,
            set_,
            {
                "output_dir": output_dir,
                "probe.steps": steps,
                "probe.site": site,
                "probe.seed": seed,
                "probe.batch_size": batch_size,
            },
        )
        _quiet_libraries()
        from .probe import run_probe  # here, not at the top: --help and config errors answer without torch

        render.scores(run_probe(cfg), cfg.run_dir / "scores.json")


@app.command(short_help="Choose the layers (top-k or tau) -> <run>/selection.json.")
def rank(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    k: KOpt = None,
    tau: TauOpt = None,
    layers: LayersOpt = None,
    strategy: StrategyOpt = None,
    seed: RankSeedOpt = None,
    budget: BudgetOpt = None,
    budget_hours: BudgetHoursOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Turn <run>/scores.json into a layer plan: the top-k layers (--k), the least k whose cumulative
    importance C(k) reaches --tau, or the layers you name (--layers 3,4,5). --strategy last, first, uniform
    or random chooses the k layers by position instead (the plans guidance has to beat), inverse takes the
    bottom-k; these and --layers need no scores.json, and when it is there the plan's share of the score is
    recorded. --budget 0.6 takes the plan with the greatest total score whose predicted device-hours
    (from <run>/costs.json, `actlora profile`) are at most 0.6 of LoRA on every layer's.
    Writes <run>/selection.json with the C(k) curve."""
    with _handled(debug):
        values = {"output_dir": output_dir, "rank.strategy": strategy, "rank.seed": seed}
        rule = {**_rule_values(k, tau, layers), **_budget_values(budget, budget_hours)}
        cfg = _config(config, set_, {**values, **rule})
        from .rank import run_rank

        render.selection(run_rank(cfg), cfg.run_dir / "selection.json")


@app.command(short_help="Train lora.method on the layer plan -> <run>/adapter/, train_summary.json.")
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    k: KOpt = None,
    tau: TauOpt = None,
    layers: LayersOpt = None,
    strategy: StrategyOpt = None,
    seed: SeedOpt = None,
    budget: BudgetOpt = None,
    budget_hours: BudgetHoursOpt = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="train.epochs")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="train.lr")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <run>/checkpoints/last.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run here (set aside until this one ends).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Train lora.method (LoRA; or adalora, ia3, vera, lokr, loha, full) on the layer plan:
    <run>/selection.json, or ranked on the fly from scores.json when --k or --tau is given; --k all is every
    layer (the baseline; needs no probe). Writes <run>/adapter (PEFT format; model/ for full), checkpoints/,
    train_log.jsonl and train_summary.json."""
    with _handled(debug, resume="flag"):
        cfg = _config(
            config,
            set_,
            {
                "output_dir": output_dir,
                "train.seed": seed,
                "train.epochs": epochs,
                "train.lr": lr,
                "train.max_steps": max_steps,
                "rank.strategy": strategy,
                **_rule_values(k, tau, layers),
                **_budget_values(budget, budget_hours),
            },
        )
        _quiet_libraries()
        from .rank import ranked_now
        from .train import run_train

        # a k, tau or budget typed here ranks the run's scores now, ahead of an older selection.json;
        # otherwise the run's own plan (rank.layers, --k all, a plan by position, selection.json, or the
        # file's rule on scores.json)
        typed_budget = budget is not None or budget_hours is not None
        typed_rule = k not in (None, "all") or tau is not None or typed_budget
        plan = ranked_now(cfg) if typed_rule and cfg.rank.strategy in ("scores", "inverse") else None
        render.train_summary(run_train(cfg, plan=plan, resume=resume, overwrite=overwrite), cfg.run_dir)


@app.command("eval", short_help="Metrics, latency and throughput of the trained run -> <run>/eval.json.")
def eval_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Evaluate the trained run (<run>/adapter, or <run>/model for full fine-tuning) on the task's validation
    split(s): the GLUE metric(s), and latency (ms per example, p50/p90) and throughput at the eval batch size,
    adapters unmerged and merged. Writes eval.json."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .evaluation import run_eval

        render.eval_result(run_eval(cfg), cfg.run_dir / "eval.json")


@app.command(short_help="Each layer's step cost on this device -> <run>/costs.json (for --budget).")
def profile(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    batches: Annotated[
        int, typer.Option("--batches", min=1, help="Training batches timed per plan, across the lengths.")
    ] = 6,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Interleaved rounds over the plans (median taken).")
    ] = 3,
    debug: DebugOpt = False,
) -> None:
    """Measure what a layer plan costs here: full training steps (forward, backward, AdamW) of the plan {m}
    for every layer m, and of every layer, on the same training batches, at the config's batch size, lengths,
    method and precision. Writes <run>/costs.json, from which `rank --budget` predicts any plan's step time
    and device-hours (the backward stops at the lowest adapted layer; the prefix cache skips the layers below
    it after the first epoch), and train reports predicted against measured step time."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .profile import run_profile

        render.costs(run_profile(cfg, batches=batches, rounds=rounds), cfg.run_dir / "costs.json")


@app.command(short_help="Label a JSON Lines file with the trained run -> predictions JSON Lines.")
def predict(
    input_: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="JSON Lines, one object per line with the task's text field(s).",
            show_default=False,
        ),
    ],  # fmt: skip
    output: Annotated[Path, typer.Option("--output", help="Where the predictions go (JSON Lines).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Score every line of --input with the run's trained model (batched, longest first) and write each
    line back with "prediction" (the label's name where the task has names), "label_id" and
    "probabilities" (regression: "prediction" alone) to --output, atomically."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .serve import run_predict

        render.served(run_predict(cfg, input_, output, overwrite), "predict")


@app.command(short_help="Merge the adapter into the base -> a model folder plain from_pretrained serves.")
def export(
    merge: Annotated[Path, typer.Option("--merge", help="The model folder to write.", show_default=False)],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing model folder at --merge.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Write the run's model with the adapter merged into the base weights (full fine-tuning: the model as
    trained) and the tokenizer to --merge, so that AutoModelForSequenceClassification.from_pretrained serves
    it with no peft. Refused on a 4-bit base (merging re-quantises: another model)."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .serve import run_export

        render.served(run_export(cfg, merge, overwrite), "export")


@app.command(short_help="Runs against a baseline, Table 5's columns, seeds as mean ± std.")
def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders to compare (each with train_summary.json, eval.json and config.resolved.yaml)."
        ),
    ],
    baseline: Annotated[
        Path,
        typer.Option(
            "--baseline",
            "-b",
            help="A baseline run folder (e.g. LoRA on all layers); "
            "the given runs with its config but another train.seed join its group.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Also write the report as JSON here, with its .md and two PNG charts beside it."
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Compare runs with a baseline as the paper's Table 5 does: metric change, trainable parameters,
    device-hours and latency saved, throughput gained, step-time ratio. Runs differing only in train.seed form
    a group, reported as mean ± std over its seeds (Markdown on stdout)."""
    with _handled(debug):
        from .compare import compare_runs, markdown, write_report

        report = compare_runs(runs, baseline)
        text = markdown(report)
        if out is not None:
            for path in write_report(report, out):
                ui.note(f"-> {path}")
        render.comparison(report, text)


@app.command(short_help="Write a folder's study and comparison reports (.md, .html) again from their JSON.")
def report(
    folder: Annotated[Path, typer.Argument(help="A study's --out folder, or the folder of a compare --out.")],
    debug: DebugOpt = False,
) -> None:
    """Write the Markdown (charts linked) and the self-contained HTML page of every study and comparison in
    FOLDER again from their JSON: nothing is probed, trained or plotted again."""
    with _handled(debug):
        from .studies import render_reports

        for path in render_reports(folder):
            ui.note(f"-> {path}")


@app.command(short_help="Metric drop with each layer's adapters switched off -> <run>/ablation.json.")
def ablate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    mode: Annotated[
        str,
        typer.Option(
            help="adapter: switch the layer's LoRA off; projection: zero the whole "
            "projection (the paper's wording)."
        ),
    ] = "adapter",
    debug: DebugOpt = False,
) -> None:
    """Ablation importance: in a run trained with LoRA on every layer (--k all), switch off one layer's Q, V
    or both at a time and record the metric drop on the validation split -> <run>/ablation.json."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .ablation import run_ablation

        if mode not in ("adapter", "projection"):
            raise ConfigError([Problem("--mode", f"unknown mode '{mode}'", "adapter or projection")])
        render.ablation(run_ablation(cfg, mode))


@app.command(short_help="A grid of methods x k x seeds x tasks, resumable, one run folder per point.")
def sweep(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Sweep folder: <out>/<task>/<method>-k<k>-seed<s>/ per point, "
            "<out>/<task>/probe/, <out>/sweep.json.",
        ),
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    methods: Annotated[
        str | None,
        typer.Option("--methods", help="Comma-separated lora.method values (default: the config's)."),
    ] = None,
    k: Annotated[
        str | None,
        typer.Option(
            "--k", help="Comma-separated k values, whole numbers or 'all' (default: the config's rank.k)."
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated train.seed values (default: the config's).")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated task.name values (default: the config's).")
    ] = None,
    strategies: Annotated[
        str | None,
        typer.Option(
            "--strategies",
            help="Comma-separated rank.strategy values: scores (guided), inverse, last, first, uniform, "
            "random (default: the config's). Each k is trained with each.",
        ),
    ] = None,
    draws: Annotated[int, typer.Option("--draws", help="Random plans per k (rank.seed 0..N-1).")] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the points and what each would run; write nothing.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Train and evaluate every point of methods x k x strategies x seeds x tasks, one run folder each (a plan
    strategy other than the guided one is named in the folder, e.g. lora-k3-last-seed0); probe once per task
    (probe.seed) for the points with a k. Run it again to resume: finished points are skipped, a trained
    point is only evaluated, an interrupted one resumes from its checkpoint. Ends with a summary and, per
    task, the points compared with LoRA on every layer, seeds as mean ± std (<out>/<task>/comparison.md)."""
    with _handled(debug, resume="rerun"):
        cfg = _config(config, set_, {})
        _quiet_libraries()
        from .sweep import parse_grid, run_sweep

        grid = parse_grid(cfg, methods, k, seeds, tasks, strategies, draws)
        doc = run_sweep(cfg, grid, out, dry_run=dry_run)
        if dry_run:
            render.sweep_plan(doc, out)
        else:
            render.sweep(doc, out)


OutOpt = Annotated[Path, typer.Option("--out", help="Folder for the study's JSON, Markdown and plots.")]


@study_app.command("stability")
def study_stability_cmd(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    scorers: Annotated[str, typer.Option(help="Comma-separated scorers.")] = "activation_norm,grad_norm",
    seeds: Annotated[int, typer.Option(help="Probe seeds 0..N-1.")] = 10,
    ks: Annotated[str, typer.Option(help="Comma-separated k for the top-k Jaccard.")] = "2,4",
    debug: DebugOpt = False,
) -> None:
    """Ranking stability across probe seeds: pairwise Kendall tau and top-k Jaccard (Tables 9, 10)."""
    with _handled(debug):
        cfg = _config(config, set_, {})
        _quiet_libraries()
        from .studies import study_stability

        study_stability(cfg, parse_list(scorers), list(range(seeds)), _numbers(ks, int, "--ks"), out)
        render.study(out, "stability")


@study_app.command("tasks")
def study_tasks_cmd(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated task names.")] = "movies,tweets,amazon,nyt",
    debug: DebugOpt = False,
) -> None:
    """Agreement of one scorer's layer ranking across tasks: rank-correlation matrix (Fig. 11)."""
    with _handled(debug):
        cfg = _config(config, set_, {})
        _quiet_libraries()
        from .studies import study_tasks

        study_tasks(cfg, parse_list(tasks), out)
        render.study(out, "tasks")


@study_app.command("correlation")
def study_correlation_cmd(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    scorers: Annotated[
        str, typer.Option(help="Comma-separated scorers.")
    ] = "activation_norm,cka,grad_norm,fisher,taylor,weight_delta",
    debug: DebugOpt = False,
) -> None:
    """Each scorer against ablation importance: Pearson, Spearman, Kendall, cosine (Table 11). The run folder
    must hold a LoRA-on-all-layers adapter and its ablation.json (actlora train --k all; actlora ablate)."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .studies import study_correlation

        study_correlation(cfg, parse_list(scorers), out)
        render.study(out, "correlation")


@study_app.command("thresholds")
def study_thresholds_cmd(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutputOpt = None,
    taus: Annotated[str, typer.Option(help="Comma-separated tau values.")] = "0.25,0.5,0.75,1.0",
    debug: DebugOpt = False,
) -> None:
    """The k needed to reach each cumulative-importance threshold tau, from the run's scores.json (Table 8),
    with the C(k) curve and the layer scores plotted."""
    with _handled(debug):
        cfg = _config(config, set_, {"output_dir": output_dir})
        _quiet_libraries()
        from .studies import study_thresholds

        study_thresholds(cfg, out, _numbers(taus, float, "--taus"))
        render.study(out, "thresholds")


@study_app.command("frontier")
def study_frontier_cmd(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    k: Annotated[str | None, typer.Option("--k", help="Comma-separated k values (default 1..L).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated training seeds.")] = "0,1",
    draws: Annotated[int, typer.Option("--draws", min=1, help="Random plans per k.")] = 3,
    budget: Annotated[
        float,
        typer.Option("--budget", min=0.01, max=1.0, help="The budget plan's share of every layer's cost."),
    ] = 0.75,
    protocol_check: Annotated[
        bool,
        typer.Option(
            "--protocol-check/--no-protocol-check",
            help="Also train the guided plan and every layer with the paper's loop (no length grouping, no "
            "prefix cache), to show the fast defaults' effect.",
        ),
    ] = True,
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            help="Comma-separated plans to measure the guided one against (it and every layer always run).",
        ),
    ] = "budget,last,first,uniform,random",
    eval_examples: Annotated[
        int | None,
        typer.Option(
            "--eval-examples",
            min=1,
            help="Evaluate on the first N validation examples (default: the whole split; a deep model on a "
            "CPU needs fewer).",
        ),
    ] = None,
    profile_batches: Annotated[
        int, typer.Option("--profile-batches", min=1, help="Batches timed per plan by the cost profile.")
    ] = 6,
    profile_rounds: Annotated[
        int, typer.Option("--profile-rounds", min=1, help="Rounds of the cost profile (medians over them).")
    ] = 3,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile/--no-profile",
            help="Profile every one-layer plan's cost first (L + 1 timed training steps per batch and "
            "round): the budget plan and the predicted step times need it.",
        ),
    ] = True,
    debug: DebugOpt = False,
) -> None:
    """Does guidance pay at equal cost? Per k, train the guided plan, the budget-selected plan, the last,
    first and uniform k layers and --draws random plans (each distinct plan once per seed), and every layer;
    evaluate on the whole validation split; report metric against device-hours (probe included) with the
    Pareto front, guided minus each plan paired over seeds and examples with bootstrap 95 % intervals, per k
    and per cost bucket, guided's percentile among the random plans, and predicted against measured step time.
    Resumable: runs already made from the same config are reused."""
    with _handled(debug):
        cfg = _config(config, set_, {})
        _quiet_libraries()
        from .frontier import run_frontier

        ks = None if k is None else _numbers(k, int, "--k")
        run_frontier(
            cfg,
            out,
            ks,
            tuple(_numbers(seeds, int, "--seeds")),
            draws,
            budget,
            protocol_check,
            profile_batches,
            profile_rounds,
            tuple(s.strip() for s in strategies.split(",") if s.strip()),
            eval_examples,
            profile,
        )
        render.study(out, "frontier")


@data_app.command("fetch")
def data_fetch(
    dir_: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Target folder (default: $ACTLORA_CACHE/sentiment or ~/.cache/actlora/sentiment)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download and prepare again.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Download the vaderSentiment 3.3.2 sdist from the package registry and prepare deterministic
    train/validation splits of its four rated domains (movies, tweets, amazon, nyt)."""
    with _handled(debug):
        import json

        from .sentiment_data import cache_dir, fetch

        root = fetch(Path(dir_) if dir_ else cache_dir(), force=force)
        render.data_manifest(json.loads((root / "manifest.json").read_text()), root)


@configs_app.command("list")
def configs_list(debug: DebugOpt = False) -> None:
    """The shipped configs: name (what --config takes), model, task, method and the layer rule (k or tau)."""
    with _handled(debug):
        from .config import packaged_config, packaged_config_names

        rows = []
        for name in packaged_config_names():
            cfg = load_config(packaged_config(name))
            rule = f"k={cfg.rank.k}" if cfg.rank.k is not None else f"tau={cfg.rank.tau}"
            rows.append(
                {
                    "name": name,
                    "model": cfg.model.name,
                    "task": cfg.task.name,
                    "method": cfg.lora.method,
                    "rule": "layers=" + ",".join(map(str, cfg.rank.layers)) if cfg.rank.layers else rule,
                }
            )
        render.configs(rows)


@configs_app.command("copy")
def configs_copy(
    name: Annotated[str, typer.Argument(help="A shipped config (actlora configs list), .yaml optional.")],
    dest: Annotated[Path, typer.Argument(help="The file to write, or a folder to copy it into.")],
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Copy a shipped config to DEST, comments and all, to edit and run with --config DEST."""
    with _handled(debug):
        from .config import packaged_config, packaged_configs_root

        source = packaged_config(name)
        if source is None:
            what, fix = "no shipped config by this name", "`actlora configs list` names them"
            raise ActloraError(Problem(name, what, fix))
        target = dest / source.name if dest.is_dir() else dest
        if target.exists() and not force:
            raise ActloraError(Problem(str(target), "exists already", "choose another DEST, or add --force"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        shipped = source.relative_to(packaged_configs_root()).as_posix()
        render.copied({"name": shipped, "source": str(source), "path": str(target)})


@app.command("config", short_help="Validate a config and print it resolved.")
def show_config(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Validate a config and print it resolved (defaults, file and overrides merged)."""
    with _handled(debug):
        render.resolved_config(_config(config, set_, {}))


def main() -> None:
    app(prog_name="actlora")


if __name__ == "__main__":
    sys.exit(main())
