"""The frozen-prefix cache: a cached run's losses and adapter equal those of the uncached run with
frozen-prefix dropout off (fp32 store), in memory and on disk, for an encoder with relative attention and a
decoder; later epochs really replay; bf16 storage stays close; a trained prefix is refused."""

from __future__ import annotations

import json

import pytest
import torch

from actlora_cli import train
from actlora_cli.config import Config
from actlora_cli.errors import ConfigError
from tests.conftest import poison_loss, tiny_config


def _run(
    tmp_path, name, model_dir, tiny_task, layers=(2, 3), **train_section
) -> tuple[dict, list[float], dict]:
    from safetensors.torch import load_file

    cfg = Config.model_validate(
        tiny_config(
            model_dir,
            tiny_task,
            tmp_path / name,
            rank={"layers": list(layers)},
            train={"epochs": 3, "lr": 5e-3, "batch_size": 8, **train_section},
        )
    )
    summary = train.run_train(cfg)
    losses = [json.loads(line)["loss"] for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    return summary, losses, load_file(str(cfg.run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "llama"])
def test_cached_run_equals_uncached_run_without_prefix_dropout(tmp_path, tiny_models, tiny_task, family):
    model = tiny_models[family]
    _, plain, plain_weights = _run(tmp_path, "plain", model, tiny_task, frozen_dropout=False)
    summary, cached, cached_weights = _run(
        tmp_path, "cached", model, tiny_task, prefix_cache="memory", prefix_cache_dtype="fp32"
    )
    assert len(cached) == len(plain) == 36
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    for key in plain_weights:
        torch.testing.assert_close(cached_weights[key], plain_weights[key], rtol=1e-4, atol=1e-6)
    info = summary["frozen_prefix"]
    assert info["dropout"] is False and info["lowest_trained_layer"] == 2
    # epoch 1 computes every batch (12), epochs 2 and 3 replay every batch: all 96 examples were stored
    assert info["cache"]["forwards_computed"] == 12 and info["cache"]["forwards_replayed"] == 24
    assert info["cache"]["examples_stored"] == 96 and info["cache"]["layers_cached"] == 2


def test_the_equality_is_not_vacuous(tmp_path, tiny_models, tiny_task):
    """With the prefix's dropout on (the default), the same run differs: dropout is what the cache must switch
    off, and the test above would see it if it did not."""
    _, with_dropout, _ = _run(tmp_path, "dropout", tiny_models["bert"], tiny_task)
    summary, without, _ = _run(
        tmp_path, "cached", tiny_models["bert"], tiny_task, prefix_cache="memory", prefix_cache_dtype="fp32"
    )
    assert not torch.allclose(torch.tensor(with_dropout), torch.tensor(without), rtol=1e-4)
    assert summary["frozen_prefix"]["dropout_rates_zeroed"] > 0


def test_disk_store_equals_memory_store_and_is_removed(tmp_path, tiny_models, tiny_task):
    _, memory, _ = _run(
        tmp_path, "memory", tiny_models["bert"], tiny_task, prefix_cache="memory", prefix_cache_dtype="bf16"
    )
    summary, disk, _ = _run(
        tmp_path, "disk", tiny_models["bert"], tiny_task, prefix_cache="disk", prefix_cache_dtype="bf16"
    )
    assert disk == memory
    assert summary["frozen_prefix"]["cache"]["store"] == "disk"
    assert not list((tmp_path / "disk").glob("prefix_cache*"))


def test_bf16_store_stays_close_to_fp32(tmp_path, tiny_models, tiny_task):
    _, fp32, _ = _run(
        tmp_path, "fp32", tiny_models["bert"], tiny_task, prefix_cache="memory", prefix_cache_dtype="fp32"
    )
    summary, bf16, _ = _run(
        tmp_path, "bf16", tiny_models["bert"], tiny_task, prefix_cache="memory", prefix_cache_dtype="bf16"
    )
    assert fp32[:12] == bf16[:12]  # epoch 1 runs the prefix in both
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=2e-2, atol=2e-3)
    assert summary["frozen_prefix"]["cache"]["dtype"] == "bfloat16"


def test_a_trained_prefix_is_refused_before_anything_is_touched(tmp_path, tiny_models, tiny_task):
    """Full fine-tuning of every layer trains the embeddings: refused before the run folder is cleared, so an
    earlier run's results survive the mistake."""
    earlier = Config.model_validate(
        tiny_config(
            tiny_models["bert"], tiny_task, tmp_path / "run", rank={"k": "all"}, train={"max_steps": 2}
        )
    )
    train.run_train(earlier)
    cfg = Config.model_validate(
        tiny_config(
            tiny_models["bert"],
            tiny_task,
            tmp_path / "run",
            lora={"method": "full"},
            rank={"k": "all"},
            train={"max_steps": 2, "prefix_cache": "memory"},
        )
    )
    with pytest.raises(ConfigError, match="embeddings.*is trained"):
        train.run_train(cfg, overwrite=True)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last").is_dir()


def test_disk_store_is_removed_when_the_run_fails(tmp_path, tiny_models, tiny_task, monkeypatch):
    poison_loss(monkeypatch, at_call=15)
    with pytest.raises(train.NonFiniteLoss):
        _run(tmp_path, "disk", tiny_models["bert"], tiny_task, prefix_cache="disk")
    import gc

    gc.collect()
    assert not list((tmp_path / "disk").glob("prefix_cache*"))


def test_frozen_dropout_is_recorded_when_left_on(tmp_path, tiny_models, tiny_task):
    summary, _, _ = _run(tmp_path, "run", tiny_models["bert"], tiny_task, epochs=1)
    assert summary["frozen_prefix"] == {
        "lowest_trained_layer": 2,
        "cache_setting": "off",
        "cache_store": "off",
        "dropout": True,
        "dropout_rates_zeroed": 0,
    }


def test_auto_caches_only_when_replay_can_pay(tmp_path, tiny_models, tiny_task):
    """train.prefix_cache=auto (the default): memory for a multi-epoch run whose plan leaves layer 0 frozen,
    off for one epoch or a plan on layer 0, with the reason recorded; the cached run replays."""
    summary, _, _ = _run(tmp_path, "auto", tiny_models["bert"], tiny_task, prefix_cache="auto")
    info = summary["frozen_prefix"]
    assert (info["cache_setting"], info["cache_store"]) == ("auto", "memory")
    assert info["dropout"] is False and "more than one epoch" in info["cache_choice"]
    assert info["cache"]["forwards_replayed"] == 24
    one, _, _ = _run(tmp_path, "one", tiny_models["bert"], tiny_task, prefix_cache="auto", epochs=1)
    assert (
        one["frozen_prefix"]["cache_store"] == "off" and "one epoch" in one["frozen_prefix"]["cache_choice"]
    )
    assert one["frozen_prefix"]["dropout"] is True  # off: the prefix keeps its dropout
    zero, _, _ = _run(tmp_path, "zero", tiny_models["bert"], tiny_task, layers=(0, 3), prefix_cache="auto")
    assert (
        zero["frozen_prefix"]["cache_store"] == "off" and "layer 0" in zero["frozen_prefix"]["cache_choice"]
    )


def test_auto_refuses_a_store_over_a_quarter_of_free_memory(monkeypatch, tiny_models):
    from actlora_cli import prefix_cache
    from actlora_cli.modeling import locate

    model = __import__("transformers").AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"])
    model.requires_grad_(False)  # frozen, as under an adapter
    arch = locate(model)
    lengths = [10] * 100
    need = 1_000 * arch.hidden_size * 4  # 1,000 tokens x hidden x 4 bytes
    monkeypatch.setattr(prefix_cache, "available_memory", lambda: 4 * need + 4)
    assert prefix_cache.auto_store(model, arch, 2, 3, lengths, torch.float32)[0] == "memory"
    monkeypatch.setattr(prefix_cache, "available_memory", lambda: 4 * need - 4)
    store, why = prefix_cache.auto_store(model, arch, 2, 3, lengths, torch.float32)
    assert store == "off" and "quarter" in why
