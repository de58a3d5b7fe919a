"""The Act-LoRA paper's trainable-parameter counts (Table 5) on a random-weight DeBERTa-v3-base shape: LoRA
r=8 on Q and V with the classifier trained and the pooler frozen (lora.train_pooler=false) gives 296,450 on
every layer and 148,994 on six; training the pooler adds its 768 x 768 + 768. A frozen pooler is still saved,
so the adapter reloads to the trained model's logits."""

from __future__ import annotations

import pytest
import torch

from actlora_cli.adapters import apply_method, count_parameters
from actlora_cli.config import LoraSection
from actlora_cli.modeling import locate


def _deberta_v3_base_shape():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    # the base model's shape; a small vocabulary (the embeddings are frozen and not counted) keeps it light
    config = DebertaV2Config(
        vocab_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
        norm_rel_ebd="layer_norm", share_att_key=True, pooler_hidden_size=768, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(config)
    model.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("layers", "train_pooler", "expected"),
    [
        (list(range(12)), False, 296_450),  # 12 x 2 x (768 x 8 + 8 x 768) + classifier 768 x 2 + 2
        ([6, 7, 8, 9, 10, 11], False, 148_994),  # the paper's k = 6
        (list(range(12)), True, 296_450 + 768 * 768 + 768),  # 887,042: the pooler trained too
    ],
)
def test_paper_counts(layers, train_pooler, expected):
    model = _deberta_v3_base_shape()
    lora = LoraSection(targets=["q", "v"], r=8, alpha=16, train_pooler=train_pooler)
    adapted = apply_method(model, locate(model), lora, layers)
    assert count_parameters(adapted.model)[0] == expected


def test_frozen_pooler_is_saved_and_reloads_to_the_same_logits(tmp_path, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = tiny_models["deberta-v2"]
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    model.requires_grad_(False)
    arch = locate(model)
    lora = LoraSection(targets=["q", "v"], train_pooler=False)
    adapted = apply_method(model, arch, lora, [0, 1])
    assert not any("pooler" in n for n, p in adapted.model.named_parameters() if p.requires_grad)
    # the pooler as trained on top of: drawn here, not in the checkpoint; changed so a fresh draw would differ
    changed = 0
    with torch.no_grad():
        for name, param in adapted.model.named_parameters():
            if "pooler" in name and "modules_to_save" in name:
                param.add_(0.5)
                changed += 1
    assert changed == 2  # the saved copy's weight and bias
    adapted.save(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    adapted.model.eval()
    expected = adapted.model(input_ids=ids).logits
    fresh = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)
