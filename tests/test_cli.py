"""The command line end to end through Typer's runner: probe -> rank, errors -> exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from actlora_cli.config import Config
from tests.conftest import NUM_LAYERS, tiny_config

runner = CliRunner()


def _write(tmp_path, cfg: dict, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _invoke(*args):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def bert_cfg(tmp_path, tiny_models, tiny_task):
    return _write(tmp_path, tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run"))


def test_probe_then_rank(tmp_path, bert_cfg):
    result, text = _invoke("probe", "--config", bert_cfg, "--steps", "4")
    assert result.exit_code == 0, text
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["kind"] == "scores" and scores["schema_version"] == 1
    assert len(scores["raw"]) == len(scores["scores"]) == NUM_LAYERS
    assert min(scores["scores"]) == 0.0 and max(scores["scores"]) == 1.0
    assert scores["batches_seen"] == 4 and scores["examples_seen"] == 32
    assert scores["model"]["num_layers"] == NUM_LAYERS
    assert (tmp_path / "run" / "config.resolved.yaml").is_file()
    resolved = yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())
    assert resolved["probe"]["steps"] == 4  # the flag is recorded

    result, text = _invoke("rank", "--config", bert_cfg, "--k", "2")
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    order = sorted(range(NUM_LAYERS), key=lambda i: (-scores["scores"][i], i))
    assert sel["layers"] == sorted(order[:2])
    assert sel["k"] == 2 and sel["rule"] == "top_k"
    assert len(sel["cumulative_importance"]) == NUM_LAYERS

    result, text = _invoke("rank", "--config", bert_cfg, "--tau", "1.0")
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    # the min-score layer has score 0 and adds nothing to C(k): tau=1 needs L-1 layers
    assert sel["rule"] == "tau" and sel["k"] == NUM_LAYERS - 1


def test_flag_k_replaces_tau_from_file(tmp_path, tiny_models, tiny_task):
    cfg = _write(tmp_path, tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run", rank={"tau": 0.5}))
    assert _invoke("probe", "-c", cfg)[0].exit_code == 0
    result, text = _invoke("rank", "-c", cfg, "--k", "all")
    assert result.exit_code == 0, text
    assert json.loads((tmp_path / "run" / "selection.json").read_text())["layers"] == list(range(NUM_LAYERS))


def test_misspelt_key_exits_2_naming_it(tmp_path, tiny_models, tiny_task):
    cfg = tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run")
    cfg["probe"]["stpes"] = 3
    cfg["trian"] = {"lr": 1}
    result, text = _invoke("probe", "--config", _write(tmp_path, cfg))
    assert result.exit_code == 2
    assert "probe.stpes" in text and "did you mean 'probe.steps'" in text
    assert "trian" in text and "did you mean 'train'" in text  # both reported together
    assert "Traceback" not in text
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_bad_flag_values_exit_2(bert_cfg):
    result, text = _invoke("rank", "--config", bert_cfg, "--k", "three")
    assert result.exit_code == 2 and "--k" in text
    result, text = _invoke("probe", "--config", bert_cfg, "--set", "probe.site=middle")
    assert result.exit_code == 2 and "probe.site" in text
    result, text = _invoke("probe", "--config", bert_cfg, "--set", "rank.tau=1.5")
    assert result.exit_code == 2 and "rank.tau" in text


def test_rank_without_scores_says_run_probe(bert_cfg):
    result, text = _invoke("rank", "--config", bert_cfg, "--k", "2")
    assert result.exit_code == 2
    assert "scores.json" in text and "actlora probe" in text


def test_rank_k_beyond_layers(tmp_path, bert_cfg):
    assert _invoke("probe", "-c", bert_cfg)[0].exit_code == 0
    result, text = _invoke("rank", "-c", bert_cfg, "--k", str(NUM_LAYERS + 1))
    assert result.exit_code == 2
    assert "rank.k" in text and f"1..{NUM_LAYERS}" in text
    assert not (tmp_path / "run" / "selection.json").exists()


def test_rank_refuses_scores_of_another_model(tmp_path, tiny_models, tiny_task):
    bert = _write(tmp_path, tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run"), "bert.yaml")
    roberta = _write(
        tmp_path, tiny_config(tiny_models["roberta"], tiny_task, tmp_path / "run"), "roberta.yaml"
    )
    assert _invoke("probe", "-c", bert)[0].exit_code == 0
    result, text = _invoke("rank", "-c", roberta, "--k", "2")
    assert result.exit_code == 2
    assert str(tiny_models["bert"]) in text and str(tiny_models["roberta"]) in text
    assert "re-run `actlora probe`" in text


def test_help_teaches():
    result, text = _invoke("--help")
    assert result.exit_code == 0
    for word in ("probe", "rank", "scores.json", "selection.json"):
        assert word in text
    result, text = _invoke("probe", "--help")
    assert result.exit_code == 0 and "--steps" in text and "--set" in text


def test_train_over_a_finished_run_needs_overwrite(tmp_path, bert_cfg):
    """The refusal names --overwrite: the flag must exist on the command line."""
    args = ("train", "-c", bert_cfg, "--k", "all", "--max-steps", "1")
    assert _invoke(*args)[0].exit_code == 0
    result, text = _invoke(*args)
    assert result.exit_code == 2 and "--overwrite" in text
    result, text = _invoke(*args, "--overwrite")
    assert result.exit_code == 0, text


def test_help_and_config_errors_answer_without_torch(tmp_path):
    """Stages (and torch, seconds to import) load only once the config is valid."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe:\n  stpes: 3\n")
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom actlora_cli.cli import app\n"
        f"runs = (['--help'], ['probe', '-c', {str(bad)!r}])\n"
        "codes = [CliRunner().invoke(app, args).exit_code for args in runs]\n"
        "print(*codes, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "2", "False"]


@pytest.mark.slow
def test_offline_default_real_minilm(tmp_path):
    """The README's job on the real packaged MiniLM and the real packaged movie sentences."""
    out = str(tmp_path / "run")
    result, text = _invoke("probe", "--config", "configs/minilm_movies.yaml", "-o", out, "--steps", "8")
    assert result.exit_code == 0, text
    result, text = _invoke("rank", "--config", "configs/minilm_movies.yaml", "-o", out, "--k", "3")
    assert result.exit_code == 0, text
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert scores["model"] == {
        "name": "packaged:all-MiniLM-L6-v2",
        "model_type": "bert",
        "num_layers": 6,
        "hidden_size": 384,
    }
    assert len(scores["scores"]) == 6 and len(sel["layers"]) == 3
    assert scores["examples_seen"] == 8 * 32
    # MiniLM's post-attention norms are far from flat: the profile has a real spread
    assert max(scores["raw"]) / min(scores["raw"]) > 1.2


def test_padding_to_max_length_changes_shapes_not_scores(tmp_path, bert_cfg):
    """The paper's protocol (every example padded to max_length) against dynamic padding: the probe excludes
    pad tokens, so the scores agree while the batches are 32 tokens long."""
    from actlora_cli.config import load_config
    from actlora_cli.data import collate, encoded_split, task_spec
    from actlora_cli.modeling import load_tokenizer

    assert _invoke("probe", "-c", bert_cfg, "-o", str(tmp_path / "dyn"))[0].exit_code == 0
    assert (
        _invoke("probe", "-c", bert_cfg, "-o", str(tmp_path / "pad"), "--set", "task.padding=max_length")[
            0
        ].exit_code
        == 0
    )
    dyn = json.loads((tmp_path / "dyn" / "scores.json").read_text())
    pad = json.loads((tmp_path / "pad" / "scores.json").read_text())
    assert pad["raw"] == pytest.approx(dyn["raw"], rel=1e-4) and pad["tokens_seen"] == dyn["tokens_seen"]
    cfg = load_config(bert_cfg, ["task.padding=max_length"])
    data = encoded_split(load_tokenizer(cfg.model), cfg.task, task_spec(cfg.task), "train")
    assert collate(data, [0, 1, 2])["input_ids"].shape == (3, 32)


def test_eval_progress_goes_to_stderr_and_json_keeps_stdout_clean(tmp_path, tiny_models, tiny_task):
    """Not a terminal (the runner's streams): the model load and the metric pass show as plain lines on
    stderr; under --json stdout holds the one document and stderr no progress."""
    from actlora_cli import ui
    from actlora_cli.train import run_train

    cfg = tiny_config(
        tiny_models["bert"], tiny_task, tmp_path / "run", rank={"k": "all"}, train={"max_steps": 1}
    )
    path = _write(tmp_path, cfg)
    with ui.output_mode(quiet=True):
        run_train(Config.model_validate(cfg))

    result = runner.invoke(app, ["eval", "-c", path])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert f"loading {tiny_models['bert']} ..." in lines
    # 48 validation examples in batches of 16: a line per batch (about every 5 %, at least every batch)
    passes = [line.split("  ")[0] for line in lines if line.startswith("eval validation")]
    assert passes == ["eval validation 1/3", "eval validation 2/3", "eval validation 3/3"]
    assert "eval validation" not in result.stdout and "loading" not in result.stdout

    result = runner.invoke(app, ["eval", "-c", path, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((tmp_path / "run" / "eval.json").read_text())
    assert "eval validation" not in result.stderr and "loading" not in result.stderr
