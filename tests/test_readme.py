"""The README's config reference is generated from the schema; this keeps it in sync."""

from pathlib import Path

from actlora_cli.config import describe_schema

README = Path(__file__).resolve().parent.parent / "README.md"


def test_config_reference_lists_every_setting_as_the_schema_describes_it():
    text = README.read_text()
    rows = [f"| `{key}` | `{default}` | {meaning} |" for key, default, meaning in describe_schema()]
    missing = [row for row in rows if row not in text]
    assert not missing, (
        "README config reference is stale; regenerate it from describe_schema():\n" + "\n".join(missing)
    )


def test_readme_gives_the_two_setup_commands_that_exist():
    text = README.read_text()
    assert "bash scripts/main.sh" in text and "bash scripts/test.sh" in text
    root = README.parent
    assert (root / "scripts" / "main.sh").is_file() and (root / "scripts" / "test.sh").is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()


def test_tracking_section_examples_are_valid_config(tmp_path):
    """The README's Tracking YAML and its --set form give the same, valid train.report_to."""
    import re

    from actlora_cli.config import load_config

    section = README.read_text().split("## Tracking", 1)[1]
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "tracking.yaml"
    path.write_text(snippet)
    from_yaml = load_config(path)
    assert from_yaml.train.report_to == ["tensorboard", "mlflow"] and from_yaml.train.run_name == "sst2-k6"
    command = re.search(r"--set (train\.report_to=\S+)", section).group(1)
    assert load_config(None, [command]).train.report_to == from_yaml.train.report_to
