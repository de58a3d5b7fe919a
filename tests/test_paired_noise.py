"""The paired standard error of two layers' difference over the same probe batches: against numpy, larger
than zero only where the layers move apart, smaller than the independent formula when they move together
(the case it exists for), recorded by the probe and used by rank's boundary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from actlora_cli.config import RankSection
from actlora_cli.selection import boundary, paired_noise
from actlora_cli.stopping import AutoStop
from tests.conftest import tiny_config


def test_paired_noise_against_numpy():
    rng = np.random.default_rng(0)
    per_batch = rng.normal(size=(30, 4))
    noise = paired_noise(per_batch.tolist(), span=2.0)
    d = per_batch[:, 1] - per_batch[:, 3]
    assert noise(1, 3) == pytest.approx(np.std(d, ddof=1) / np.sqrt(30) / 2.0)
    assert noise(1, 3) == pytest.approx(noise(3, 1))
    assert paired_noise([[1.0, 2.0]]) is None and paired_noise(None) is None


def test_layers_moving_together_are_told_apart_by_the_paired_error():
    # every batch shifts both layers by the same large amount (long or short sentences), plus a little noise
    rng = np.random.default_rng(1)
    shared = rng.normal(scale=1.0, size=40)
    per_batch = np.stack([5.0 + shared + rng.normal(scale=0.01, size=40),
                          5.05 + shared + rng.normal(scale=0.01, size=40)], axis=1)  # fmt: skip
    raw = per_batch.mean(axis=0).tolist()
    stderr = (per_batch.std(axis=0, ddof=1) / np.sqrt(40)).tolist()
    order = [1, 0]
    independent = boundary(1, raw, stderr, order)
    paired = boundary(1, raw, stderr, order, paired_noise(per_batch.tolist()))
    assert independent["within_noise"] and not independent["paired"]  # 0.05 against 2 x ~0.22
    assert not paired["within_noise"] and paired["paired"]  # 0.05 against 2 x ~0.002
    assert paired["independent_noise"] == pytest.approx(independent["noise"])
    # and probe.steps=auto stops at its first check on such a boundary
    rule = AutoStop(RankSection(k=1), min_steps=8, max_steps=40)
    means = torch.tensor(per_batch)
    first = next(n for n in range(1, 41) if rule(means[:n]))
    assert first == 8 and rule.last["layers"] == [1]


def test_probe_records_per_batch_values_and_rank_uses_them(tmp_path, six_layer_bert, tiny_task):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(tiny_config(six_layer_bert, tiny_task, run, probe={"steps": 5}, rank={"k": 2}))
    )
    runner = CliRunner()
    assert runner.invoke(app, ["probe", "-c", str(cfg)]).exit_code == 0
    scores = json.loads((run / "scores.json").read_text())
    assert (run / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the profile, plotted beside it
    per_batch = np.asarray(scores["raw_per_batch"])
    assert per_batch.shape == (5, 6)
    np.testing.assert_allclose(per_batch.mean(axis=0), scores["raw"], rtol=1e-12)
    np.testing.assert_allclose(per_batch.std(axis=0, ddof=1) / np.sqrt(5), scores["raw_stderr"], rtol=1e-9)
    assert runner.invoke(app, ["rank", "-c", str(cfg)]).exit_code == 0
    edge = json.loads((run / "selection.json").read_text())["boundary"]
    span = max(scores["raw"]) - min(scores["raw"])
    d = per_batch[:, edge["last_in"]] - per_batch[:, edge["first_out"]]
    assert edge["paired"] and edge["noise"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(5) / span)
