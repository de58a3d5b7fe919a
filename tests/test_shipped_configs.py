"""Every YAML shipped under configs/ (recursively) validates against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from actlora_cli.config import load_config

ROOT = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(ROOT.glob("**/*.yaml"))
# offline default + its demo + its frontier + BERT-base SST-2 + SmolLM2-135M + DeBERTa-v3-base x 9 GLUE tasks
# + Llama-3.1-8B QLoRA x 9
EXPECTED_COUNT = 23


def test_found_every_shipped_config():
    assert len(SHIPPED) == EXPECTED_COUNT, [str(p.relative_to(ROOT)) for p in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.output_dir.startswith("runs/")
    assert cfg.rank.k is not None or cfg.rank.tau is not None


def test_output_dirs_are_distinct():
    dirs = [load_config(p).output_dir for p in SHIPPED]
    assert len(set(dirs)) == len(dirs)
