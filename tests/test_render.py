"""What the commands show, from hand-made documents: no model, no stage runs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from actlora_cli import render, ui
from actlora_cli.config import dump_yaml, load_config

MODEL, TASK = {"name": "tiny-bert"}, {"name": "movies"}
SCORES = {
    "scorer": "activation_norm",
    "site": "post_attn",
    "model": MODEL,
    "task": TASK,
    "raw": [1.5, None, 3.25, 2.0],
    "scores": [0.0, 0.0, 1.0, 0.285714],
    "batches_seen": 4,
    "examples_seen": 32,
    "tokens_seen": 512,
    "timings": {"probe_s": 0.1234, "per_batch_ms": 30.85},
}
TOP_K = {
    "layers": [2, 3],
    "k": 2,
    "tau": None,
    "rule": "top_k",
    "ranking": [2, 3, 0, 1],
    "cumulative_importance": [0.7777, 1.0, 1.0, 1.0],
    "coverage": 1.0,
    "scores": SCORES["scores"],
}
TRAIN = {
    "method": "lora",
    "model": MODEL,
    "task": TASK,
    "plan": {"layers": [2, 3]},
    "final_metrics": {"validation": {"accuracy": 0.8125, "f1": 0.79}},
    "trainable_parameters": 12345,
    "trainable_share": 0.001234,
    "steps": 10,
    "epochs": 1.0,
    "samples_per_second": 123.456,
    "mean_step_ms": {"forward": 1.23, "backward": 2.34, "optimizer": 0.45},
    "device_hours": 0.000123,
    "device": "cpu",
    "world_size": 1,
    "peak_memory_mib": None,
}
EVAL = {
    "model": MODEL,
    "task": TASK,
    "device": "cpu",
    "metrics": {"validation": {"accuracy": 0.8125}},
    "timing": {
        "unmerged": {"latency_ms_p50": 1.2345, "latency_ms_p90": 2.5, "throughput_samples_per_s": 812.25},
        "merged": {"skipped": "full fine-tuning has no adapter to merge"},
    },
}
ABLATION = {
    "metric": "accuracy",
    "full_metric": 0.8125,
    "drop": {"q": [0.01, -0.02], "v": [0.0, 0.05], "both": [0.03, 0.06]},
    "importance": {"both": [0.5, 1.0]},
}


@pytest.fixture
def shown(monkeypatch):
    """ui.out into a buffer, wide enough that no row wraps; call it for what was printed so far."""
    buffer = io.StringIO()
    monkeypatch.setattr(ui, "out", Console(file=buffer, width=200))
    monkeypatch.delenv("RANK", raising=False)
    return buffer.getvalue


def _row(text: str, *cells: str) -> bool:
    """Some table row holds exactly these cells, in order."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("│")[1:-1]]
        if parts[: len(cells)] == list(cells):
            return True
    return False


def test_scores(shown):
    render.scores(SCORES, Path("run/scores.json"))
    text = shown()
    assert "activation_norm at post_attn: tiny-bert on movies" in text
    assert _row(text, "1", "undefined", "0.000", "")  # a layer the scorer could not score
    assert _row(text, "2", "3.25", "1.000", "#" * 20)
    assert _row(text, "3", "2", "0.286", "#" * 6)
    assert "4 batches, 32 examples, 512 tokens in 0.12s (30.9 ms/batch) -> run/scores.json" in text


def test_scores_without_a_site(shown):
    render.scores({**SCORES, "scorer": "grad_norm", "site": None}, Path("s.json"))
    assert "grad_norm: tiny-bert on movies" in shown()


def test_selection_top_k(shown):
    render.selection(TOP_K, Path("run/selection.json"))
    text = shown()
    assert "layer plan (top_k): k=2" in text and "tau=" not in text
    assert _row(text, "1", "2", "1.000", "0.778", "yes")
    assert _row(text, "3", "0", "0.000", "1.000", "")
    assert "selected layers [2, 3] (share of the score 1.000) -> run/selection.json" in text


def test_selection_tau(shown):
    doc = {**TOP_K, "rule": "tau", "tau": 0.5, "k": 1, "layers": [2], "coverage": 0.7777}
    render.selection(doc, Path("s"))
    text = shown()
    assert "layer plan (tau): k=1, tau=0.5" in text
    assert _row(text, "2", "3", "0.286", "1.000", "")  # ranked second, not chosen
    assert "(share of the score 0.778)" in text


def test_selection_explicit_plan_without_scores(shown):
    """rank --layers before any probe: no ranking, scores, C(k) or coverage; the chosen layers only."""
    doc = {
        "layers": [3, 4, 5],
        "k": 3,
        "tau": None,
        "rule": "explicit",
        "ranking": None,
        "cumulative_importance": None,
        "coverage": None,
        "scores": None,
    }
    render.selection(doc, Path("run/selection.json"))
    text = shown()
    assert "layer plan (explicit): k=3" in text
    for layer in ("3", "4", "5"):
        assert _row(text, "", layer, "", "", "yes")
    assert "selected layers [3, 4, 5] -> run/selection.json" in text and "share" not in text


def test_selection_explicit_plan_with_scores(shown):
    doc = {**TOP_K, "rule": "explicit", "layers": [0, 3], "coverage": 0.2222}
    render.selection(doc, Path("s"))
    text = shown()
    assert _row(text, "2", "3", "0.286", "1.000", "yes") and _row(text, "3", "0", "0.000", "1.000", "yes")
    assert _row(text, "1", "2", "1.000", "0.778", "")
    assert "selected layers [0, 3] (share of the score 0.222)" in text


def test_train_summary(shown):
    render.train_summary(TRAIN, Path("run"))
    text = shown()
    assert "train: lora on tiny-bert, movies, layers [2, 3]" in text
    assert _row(text, "validation accuracy", "0.8125") and _row(text, "validation f1", "0.7900")
    assert _row(text, "trainable parameters", "12,345 (0.123%)")
    assert _row(text, "steps / epochs", "10 / 1.0")
    assert _row(text, "step ms (fwd / bwd / opt)", "1.2 / 2.3 / 0.5")
    assert _row(text, "device-hours", "0.00012 (cpu x1)")
    assert "peak memory" not in text  # None off CUDA: no row
    assert "adapter -> run/adapter" in text


def test_train_summary_peak_memory(shown):
    render.train_summary({**TRAIN, "peak_memory_mib": 321.5}, Path("run"))
    assert _row(shown(), "peak memory MiB", "321.5")


def test_eval_result(shown):
    render.eval_result(EVAL, Path("run/eval.json"))
    text = shown()
    assert "eval: tiny-bert on movies (cpu)" in text
    assert _row(text, "validation accuracy", "0.8125")
    assert _row(text, "latency ms/example p50 / p90 (unmerged)", "1.234 / 2.500")
    assert _row(text, "throughput samples/s (unmerged)", "812.2")
    assert _row(text, "merged", "full fine-tuning has no adapter to merge")
    assert "time to first token" not in text and "-> run/eval.json" in text


def test_eval_result_decoder_time_to_first_token(shown):
    timing = {**EVAL["timing"], "time_to_first_token_ms_p50": 3.0, "time_to_first_token_ms_p90": 4.5}
    render.eval_result({**EVAL, "timing": timing}, Path("e.json"))
    assert _row(shown(), "time to first token ms p50 / p90", "3.000 / 4.500")


def test_ablation(shown):
    render.ablation(ABLATION)
    text = shown()
    assert "ablation: accuracy 0.8125 with every adapter on" in text
    assert "drop q" in text and "drop v" in text and "drop both" in text
    assert _row(text, "0", "+0.0100", "+0.0000", "+0.0300", "0.500")
    assert _row(text, "1", "-0.0200", "+0.0500", "+0.0600", "1.000")


def test_sweep_plan(shown):
    doc = {
        "total": 2,
        "points": [
            {"task": "movies", "name": "lora-kall-seed0", "action": "train"},
            {"task": "movies", "name": "lora-k2-seed0", "action": "eval"},
        ],
        "probes": {"movies": {"action": "probe", "folder": "sw/movies/probe"}},
    }
    render.sweep_plan(doc, Path("sw"))
    text = shown()
    assert "sweep plan: 2 points in sw (nothing written)" in text
    assert _row(text, "1", "movies", "lora-kall-seed0", "train")
    assert _row(text, "2", "movies", "lora-k2-seed0", "eval")
    assert "probe movies: probe (sw/movies/probe)" in text


def test_sweep_with_comparisons(shown, capsys, tmp_path):
    md = tmp_path / "comparison.md"
    md.write_text("| run | metric |\n|---|---|\n| lora [all] | 0.8 |\n")
    point = {"task": "movies", "metric_name": "accuracy", "step_ms": 12.34}
    names = ("name", "action", "metric", "trainable_parameters")
    doc = {
        "total": 2,
        "points": [
            {**point, **dict(zip(names, ("lora-kall-seed0", "train", 0.8, 123456), strict=True))},
            {**point, **dict(zip(names, ("lora-k2-seed0", "skip", 0.75, 2345), strict=True))},
        ],
        "comparisons": {
            "movies": {"note": "the grid has no lora k=all point", "markdown": str(md)},
            "tweets": {"note": None, "markdown": str(md)},
        },
    }
    render.sweep(doc, Path("sw"))
    text = shown()
    assert "sweep: 2 points in sw" in text
    assert _row(text, "movies", "lora-kall-seed0", "train", "accuracy", "0.8000", "123,456", "12.3")
    assert _row(text, "movies", "lora-k2-seed0", "skip", "accuracy", "0.7500", "2,345", "12.3")
    markdown = capsys.readouterr().out  # the comparisons bypass the console: raw Markdown on stdout
    assert "\n## movies\n\nNote: the grid has no lora k=all point.\n\n| run | metric |" in markdown
    assert "\n## tweets\n\n| run | metric |" in markdown and "Note" not in markdown.split("## tweets")[1]


def test_data_manifest_title_keeps_a_long_path_whole(shown):
    root = Path("/home/someone/.cache/actlora/sentiment")
    render.data_manifest({"counts": {"movies": {"train": 100, "validation": 20}}}, root)
    text = shown()
    assert f"packaged sentiment data in {root}" in text  # on one line, though the table is narrower
    assert _row(text, "movies", "100", "20")


def test_markdown_and_study_write_stdout_as_is(capsys, tmp_path):
    long_row = "| " + " | ".join(f"column {i}" for i in range(30)) + " |\n"
    render.markdown(long_row)
    (tmp_path / "thresholds.md").write_text("| tau | k |\n|---|---|\n| 25% | 1 |\n")
    render.study(tmp_path, "thresholds")
    assert capsys.readouterr().out == long_row + "| tau | k |\n|---|---|\n| 25% | 1 |\n"


def test_resolved_config_verbatim(shown):
    cfg = load_config(None, None, {"output_dir": "runs/[bold]x"})
    render.resolved_config(cfg)
    text = shown()
    assert text == dump_yaml(cfg) and "output_dir: runs/[bold]x\n" in text


def test_non_main_ranks_show_nothing(shown, monkeypatch):
    """Under torchrun every rank runs the stage; only rank 0 shows its result."""
    monkeypatch.setenv("RANK", "1")
    render.scores(SCORES, Path("s.json"))
    render.train_summary(TRAIN, Path("run"))
    render.eval_result(EVAL, Path("e.json"))
    render.ablation(ABLATION)
    assert shown() == ""
    monkeypatch.setenv("RANK", "0")
    render.ablation(ABLATION)
    assert "ablation: accuracy" in shown()


def test_imports_no_torch():
    code = "import sys, actlora_cli.render, actlora_cli.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_plain_progress_lines_when_stderr_is_not_a_terminal(capsys):
    """Redirected stderr (nohup, Slurm): a readable line every `every` units and one at the end, not a bar."""
    with ui.plain_progress("train", 10, every=4) as advance:
        for step in range(1, 11):
            advance(1, info=f"loss {1 / step:.2f}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert "loss 0.25" in lines[0] and "loss 0.10" in lines[2] and "eta" in lines[0]


def test_train_logs_plain_lines_every_logging_steps(tmp_path, tiny_models, tiny_task):
    """Through the CLI (stderr captured: not a terminal), train prints step, epoch, loss, lr every N steps."""
    import yaml
    from typer.testing import CliRunner

    from actlora_cli.cli import app
    from tests.conftest import tiny_config

    cfg = tmp_path / "cfg.yaml"
    sections = {"train": {"logging_steps": 5}, "rank": {"k": "all"}}
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run", **sections)))
    result = CliRunner().invoke(app, ["train", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("train ")]
    assert [line.split()[1] for line in lines] == ["5/12", "10/12", "12/12"]  # 96 examples / 8 per step
    assert all(k in lines[0] for k in ("epoch 0.42", "loss", "lr", "samples/s", "eta"))
