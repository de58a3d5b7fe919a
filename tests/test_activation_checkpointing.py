"""train.gradient_checkpointing: the adapted span recomputes its activations in the backward, the backward
still stops at the lowest adapted layer, and the loss and gradients are those of a run without it (with the
prefix cache too)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from actlora_cli import adapters, train
from actlora_cli.config import Config, LoraSection, ModelSection
from actlora_cli.modeling import checkpoint_layers, load_model, locate
from tests.conftest import NUM_LAYERS, grad_reach, tiny_config


def _forward_counts(model, arch) -> tuple[list[int], list]:
    """Per layer, how often its Q projection runs: once per forward, and once more when the backward
    recomputes the layer (the projection's hooks are inside the checkpointed forward, the layer's are not)."""
    counts, handles = [0] * arch.num_layers, []
    inner = model.get_base_model()
    for i in range(arch.num_layers):
        q = inner.get_submodule(arch.projections["q"][i])
        handles.append(q.register_forward_hook(lambda *_a, i=i: counts.__setitem__(i, counts[i] + 1)))
    return counts, handles


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_checkpointing_keeps_the_cut_and_the_gradients(tiny_models, family):
    model = load_model(ModelSection(name=str(tiny_models[family])), 2, torch.device("cpu"))
    arch = locate(model)
    wrapped = adapters.apply_lora(model, arch, LoraSection(), [2, 3])
    wrapped.train()  # dropout on: the recomputation must draw the same masks
    ids = torch.randint(6, 20, (3, 9))

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int], list[bool], list[int]]:
        wrapped.zero_grad(set_to_none=True)
        calls, input_needs_grad, handles = grad_reach(wrapped, arch)
        counts, more = _forward_counts(wrapped, arch)
        torch.manual_seed(0)
        out = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0]))
        loss.backward()
        for h in handles + more:
            h.remove()
        grads = {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.requires_grad}
        return loss.detach(), grads, calls, input_needs_grad, counts

    loss, grads, calls, _, counts = step()
    assert counts == [1] * NUM_LAYERS  # no recomputation without it
    assert checkpoint_layers(wrapped, arch, 2) == [2, 3]
    ck_loss, ck_grads, ck_calls, ck_inputs, ck_counts = step()

    assert ck_counts == [1, 1, 2, 2]  # the span is recomputed in the backward, the layers below are not
    assert ck_calls == calls == [0, 0, 1, 1]  # no gradient reaches below the lowest adapted layer
    assert ck_inputs == [False, False, False, True]  # not even the lowest one's input needs one
    torch.testing.assert_close(ck_loss, loss, rtol=0, atol=1e-6)
    assert ck_grads.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(ck_grads[name], grads[name], rtol=1e-5, atol=1e-7)


def test_the_loop_with_checkpointing_and_the_prefix_cache_trains_the_same_weights(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    """Two epochs on layers 2-3 with the prefix cache (the second epoch replays the stored inputs of layer
    2): with checkpointing on, the same adapter as without, the backward still cut, the span recomputed."""
    seen = {}
    real_apply = adapters.apply_method

    def apply_and_watch(model, arch, lora, layers, total_steps):
        adapted = real_apply(model, arch, lora, layers, total_steps)
        seen["calls"], _, _ = grad_reach(adapted.model, arch)
        seen["counts"], _ = _forward_counts(adapted.model, arch)
        return adapted

    monkeypatch.setattr(train, "apply_method", apply_and_watch)
    summaries, weights = {}, {}
    for on in (False, True):
        cfg = Config.model_validate(
            tiny_config(
                tiny_models["bert"],
                tiny_task,
                tmp_path / f"run-{on}",
                rank={"layers": [2, 3]},
                train={
                    "epochs": 2,
                    "prefix_cache": "memory",
                    "prefix_cache_dtype": "fp32",
                    "gradient_checkpointing": on,
                },
            )  # fmt: skip
        )
        summaries[on] = train.run_train(cfg)
        weights[on] = load_file(str(cfg.run_dir / "adapter" / "adapter_model.safetensors"))
        # 24 steps; layers 0-1 run in the first epoch's 12 forwards only (replayed after), and in none of
        # the 2 evaluations' 3 + 3 batches either way
        steps, evals = 24, 2 * 3
        assert seen["calls"] == [0, 0, steps, steps]
        span = steps * (2 if on else 1) + evals
        assert seen["counts"] == [12 + evals, 12 + evals, span, span]

    assert summaries[True]["gradient_checkpointing"] == {"layers": [2, 3]}
    assert summaries[False]["gradient_checkpointing"] is None
    assert summaries[True]["frozen_prefix"]["cache"]["forwards_replayed"] == 12
    for name in weights[False]:
        torch.testing.assert_close(weights[True][name], weights[False][name], rtol=1e-5, atol=1e-6)
    history = [h["metrics"]["validation"]["loss"] for h in summaries[True]["history"]]
    assert history == pytest.approx([h["metrics"]["validation"]["loss"] for h in summaries[False]["history"]])
