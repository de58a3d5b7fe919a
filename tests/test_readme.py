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
