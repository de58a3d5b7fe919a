"""Config schema, YAML loading and overrides: every bad setting is reported with its key path and a fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from actlora_cli.config import (
    Config,
    describe_schema,
    load_config,
    parse_override,
    resolve_config_path,
)
from actlora_cli.errors import ConfigError


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test from an empty folder: relative paths and ./configs must not see the repository."""
    monkeypatch.chdir(tmp_path)


def _problems(yaml_text: str | None, overrides: list[str], tmp_path: Path):
    path = None
    if yaml_text is not None:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml_text.replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=[o.replace("{tmp}", str(tmp_path)) for o in overrides])
    return info.value.problems


# (id, YAML file text or None, --set overrides, key path named, fragment of "what; fix")
BAD_CONFIGS = [
    ("typo-top-level", "trian:\n  lr: 0.1\n", [], "trian", "did you mean 'train'?"),
    ("typo-top-level-override", None, ["modle.name=x"], "modle", "did you mean 'model'?"),
    ("typo-nested", "probe:\n  stesp: 3\n", [], "probe.stesp", "did you mean 'probe.steps'?"),
    # difflib finds nothing close to 'rnak' (ratio 0.4 < 0.6 against 'r'): the section's keys are listed
    (
        "typo-nested-no-match",
        "lora:\n  rnak: 4\n",
        [],
        "lora.rnak",
        "known keys here: adalora, alpha, dropout, ia3, method, r, targets, train_pooler, vera",
    ),
    ("wrong-type-float", "train:\n  lr: fast\n", [], "train.lr", "valid number"),
    (
        "wrong-type-fix-names-default",
        None,
        ["train.lr=fast"],
        "train.lr",
        "AdamW learning rate. (default: 0.0002)",
    ),
    ("wrong-type-int", None, ["probe.steps=many"], "probe.steps", "valid integer"),
    ("wrong-literal", None, ["probe.site=everywhere"], "probe.site", "'post_attn'"),
    ("k-and-tau", "rank:\n  k: 3\n  tau: 0.5\n", [], "rank", "not several (k=3, tau=0.5)"),
    ("tau-zero", None, ["rank.tau=0"], "rank.tau", "greater than 0"),
    ("tau-above-one", None, ["rank.tau=1.5"], "rank.tau", "less than or equal to 1"),
    ("k-zero", None, ["rank.k=0"], "rank.k", "k must be at least 1 (got 0); use 'all'"),
    ("k-negative", None, ["rank.k=-2"], "rank.k", "at least 1 (got -2)"),
    (
        "model-folder-missing",
        "model:\n  name: ./does/not/exist\n",
        [],
        "model.name",
        "'./does/not/exist' does not exist",
    ),
    ("data-dir-missing", None, ["task.data_dir={tmp}/nope"], "task.data_dir", "nope' does not exist"),
    (
        "files-missing",
        (
            "task:\n  name: custom\n  files: {train: '{tmp}/train.csv'}\n"
            "  text_fields: [t]\n  label_field: y\n  num_labels: 2\n"
        ),
        [],
        "task.files",
        "file(s) not found: train: ",
    ),
    (
        "custom-missing-fields",
        "task:\n  name: custom\n",
        [],
        "task",
        "a custom task needs task.files, task.text_fields, task.label_field, task.num_labels",
    ),
    (
        "custom-files-and-dataset",
        "task:\n  name: custom\n  files: {train: {tmp}/cfg.yaml}\n  dataset: user/name\n"
        "  text_fields: [text]\n  label_field: label\n  num_labels: 2\n",
        [],
        "task",
        "task.files and task.dataset both given; keep one: local files, or a datasets id",
    ),
    ("lora-r-zero", None, ["lora.r=0"], "lora.r", "greater than or equal to 1"),
    ("section-not-mapping", "train: 5\n", [], "train", "valid dictionary"),
    (
        "set-without-equals",
        None,
        ["train.lr"],
        "--set train.lr",
        "expected key.path=value; e.g. --set train.lr=1e-4",
    ),
]


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "where", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in BAD_CONFIGS],
)
def test_bad_config_names_key_and_fix(tmp_path, yaml_text, overrides, where, fragment):
    problems = _problems(yaml_text, overrides, tmp_path)
    assert [p.where for p in problems] == [where]
    assert fragment in str(problems[0])


def test_bad_union_value_is_one_problem_at_the_user_key(tmp_path):
    problems = _problems(None, ["rank.k=foo"], tmp_path)
    assert [p.where for p in problems] == ["rank.k"]


def test_custom_task_text_fields_count(tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("a,b,c,y\n")
    problems = _problems(
        f"task:\n  name: custom\n  files: {{train: '{data}'}}\n  text_fields: [a, b, c]\n  label_field: y\n"
        "  num_labels: 2\n",
        [],
        tmp_path,
    )
    assert [(p.where, p.what) for p in problems] == [("task", "task.text_fields takes one or two columns")]


def test_every_problem_is_reported_together(tmp_path):
    problems = _problems(
        "trian:\n  lr: 1\nlora:\n  rnak: 4\ntrain:\n  lr: fast\nrank:\n  k: 0\nmodel:\n  name: ./nowhere\n",
        ["nonsense", "probe.steps=0"],
        tmp_path,
    )
    assert len(problems) == 7
    assert {p.where for p in problems} == {
        "--set nonsense",
        "trian",
        "lora.rnak",
        "train.lr",
        "rank.k",
        "model.name",
        "probe.steps",
    }
    message = str(ConfigError(problems))
    assert message.count("\n") == 6


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\nrank:\n  k: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.where == str(path)
    assert re.search(r"not valid YAML at line 4, column \d+", problem.what)
    assert problem.fix == "fix the YAML syntax"


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "# model:\n#   name: x\n", "{}\n"])
def test_empty_file_is_refused(tmp_path, text):
    """An empty file is more likely truncated or never written than a request for the defaults (which a run
    without --config gives)."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.where == str(path) and problem.what == "empty; a config needs at least one section"
    assert "actlora config" in problem.fix


def test_config_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 1e-4  # taux d'apprentissage élevé\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.where == str(path) and problem.what.startswith("not UTF-8 text (byte 0xe9 at offset")
    assert problem.fix == "save the config as UTF-8 text"


def test_missing_data_dir_and_files_come_with_a_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(values={"task.data_dir": str(tmp_path / "nowhere")})
    (problem,) = info.value.problems
    assert problem.where == "task.data_dir" and "actlora data fetch" in problem.fix
    with pytest.raises(ConfigError) as info:
        load_config(values={"task.name": "custom", "task.files": {"train": "nope.csv"}})
    (problem,) = info.value.problems
    assert problem.where == "task.files" and problem.what == "file(s) not found: train: nope.csv"
    assert problem.fix.startswith("give each split an existing")


def test_config_file_not_found_lists_shipped_configs(tmp_path):
    (tmp_path / "configs" / "sub").mkdir(parents=True)
    (tmp_path / "configs" / "sub" / "a.yaml").write_text("")
    (tmp_path / "configs" / "b.yaml").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config("missing.yaml")
    (problem,) = info.value.problems
    assert problem.where == "missing.yaml"
    assert problem.what == "config file not found"
    assert problem.fix == "give an existing file; shipped configs: configs/b.yaml, configs/sub/a.yaml"


# --- overrides ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "path", "value"),
    [
        ("train.epochs=3", ["train", "epochs"], 3),
        ("lora.targets=[q,k,v]", ["lora", "targets"], ["q", "k", "v"]),
        ("rank.k=all", ["rank", "k"], "all"),
        ("train.max_grad_norm=null", ["train", "max_grad_norm"], None),
        ("train.group_by_length=true", ["train", "group_by_length"], True),
        ("output_dir=runs/a=b", ["output_dir"], "runs/a=b"),  # only the first '=' splits
        ("task.eval_split=", ["task", "eval_split"], ""),
        (" rank.tau =0.5", ["rank", "tau"], 0.5),
    ],
)
def test_parse_override(item, path, value):
    assert parse_override(item) == (path, value)


def test_override_types_after_validation():
    cfg = load_config(overrides=["train.lr=1e-4", "lora.targets=[q,k,v]", "rank.k=all", "train.epochs=0.5"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-4
    assert cfg.lora.targets == ["q", "k", "v"]
    assert cfg.rank.k == "all"
    assert cfg.train.epochs == 0.5
    assert load_config(overrides=["rank.k=6"]).rank.k == 6


def test_precedence_defaults_file_overrides_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 2\n  seed: 7\nrank:\n  k: 3\n")
    cfg = load_config(
        path,
        overrides=["train.lr=0.2", "rank.k=4", "train.seed=8"],
        values={"rank.k": 5, "train.epochs": None, "train.seed": None, "probe.steps": 9},
    )
    assert cfg.train.lr == 0.2  # override beats file
    assert cfg.train.epochs == 2  # file beats default; None value skipped
    assert cfg.train.seed == 8  # override kept: a None value never overrides
    assert cfg.rank.k == 5  # value beats override and file
    assert cfg.probe.steps == 9
    assert cfg.train.batch_size == 32  # default


def test_hash_is_stable_and_sensitive(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("train:\n  lr: 0.1\nrank:\n  k: 3\n")
    b.write_text("rank:\n  k: 3\ntrain:\n  lr: 0.1\n")  # same settings, other order
    h = load_config(a).hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert load_config(a).hash() == h
    assert load_config(b).hash() == h
    assert load_config(a, overrides=["train.lr=0.2"]).hash() != h
    assert load_config(a, values={"rank.k": 4}).hash() != h
    assert load_config(a, values={"rank.k": 3}).hash() == h


def _all_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _all_keys(ann, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_describe_schema_covers_every_field():
    rows = describe_schema()
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == _all_keys(Config)
    assert {
        "model.name",
        "task.name",
        "probe.site",
        "rank.k",
        "rank.tau",
        "lora.r",
        "train.lr",
        "output_dir",
    } <= set(keys)
    assert all(description for _, _, description in rows)
    by_key = {key: default for key, default, _ in rows}
    assert by_key["lora.r"] == "8"
    assert by_key["lora.targets"] == '["q", "v"]'
    assert by_key["rank.k"] == "null"
    assert by_key["train.lr"] == "0.0002"


def test_resolve_config_path(tmp_path):
    (tmp_path / "configs" / "deberta").mkdir(parents=True)
    nested = tmp_path / "configs" / "deberta" / "sst2.yaml"
    nested.write_text("rank:\n  k: 2\n")
    assert resolve_config_path("sst2.yaml") == Path("configs/deberta/sst2.yaml")
    assert load_config("sst2.yaml").rank.k == 2
    # a file in the working folder wins; a path with a folder part is taken as given
    (tmp_path / "sst2.yaml").write_text("rank:\n  k: 4\n")
    assert resolve_config_path("sst2.yaml") == Path("sst2.yaml")
    assert resolve_config_path("other/sst2.yaml") == Path("other/sst2.yaml")
    # two candidates: ambiguous, returned as given
    (tmp_path / "sst2.yaml").unlink()
    (tmp_path / "configs" / "bert").mkdir()
    (tmp_path / "configs" / "bert" / "sst2.yaml").write_text("")
    assert resolve_config_path("sst2.yaml") == Path("sst2.yaml")


def test_config_hash_ignores_where_the_run_is_written():
    a = Config.model_validate({"output_dir": "runs/a"})
    assert a.hash() == Config.model_validate({"output_dir": "/elsewhere/b"}).hash()
    assert a.hash() != Config.model_validate({"output_dir": "runs/a", "train": {"seed": 1}}).hash()


def test_an_override_without_a_key_is_a_clean_error():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["=3"])
    assert info.value.problems[0].where == "--set =3" and "no key" in info.value.problems[0].what
