"""The activation-norm probe against independent computations, on every family and site."""

from __future__ import annotations

import statistics

import pytest
import torch

from actlora_cli.config import ModelSection
from actlora_cli.modeling import load_model, load_tokenizer, locate
from actlora_cli.scoring.activation import activation_norms
from tests.conftest import FAMILIES, NUM_LAYERS

SENTENCES = [
    ["good movie", "the plot was very dull and the ending was awful", "great cast", "superb music"],
    [
        "not quite a good film",
        "boring",
        "the actor is lovely and the story is fine but the script is poor",
        "dull",
    ],
]


def _load(model_dir):
    cfg = ModelSection(name=str(model_dir))
    tok = load_tokenizer(cfg)
    model = load_model(cfg, 2, torch.device("cpu"), pad_token_id=tok.pad_token_id)
    return tok, model, locate(model)


def _batches(tok, pad_to: int | None = None):
    out = []
    for texts in SENTENCES:
        enc = tok(texts, padding="max_length" if pad_to else True, max_length=pad_to, return_tensors="pt")
        out.append(dict(enc))
    return out


def _independent(model, arch, batches, site):
    """Reference: capture the full activations with output_hidden_states / a plain hook and reduce them in
    float64 with an explicit loop over non-pad tokens."""
    per_batch = _independent_per_batch(model, arch, batches, site)
    return [sum(b[i] for b in per_batch) / len(per_batch) for i in range(arch.num_layers)]


def _independent_per_batch(model, arch, batches, site) -> list[list[float]]:
    """Per batch, per layer: the mean over non-pad tokens of the token norms (the reference's inner part)."""
    out_rows = []
    for batch in batches:
        totals = [0.0] * arch.num_layers
        captured: dict[int, torch.Tensor] = {}
        handles = []
        last = arch.num_layers - 1
        if site == "post_attn":
            for i, name in enumerate(arch.projections["o"]):
                handles.append(
                    model.get_submodule(name).register_forward_hook(
                        lambda m, a, o, i=i, captured=captured: captured.__setitem__(i, o)
                    )
                )
        elif site == "block_out" and arch.is_decoder:
            # decoders' hidden_states[-1] has the final norm applied: read the last block's own output
            handles.append(
                model.get_submodule(arch.layer_path(last)).register_forward_hook(
                    lambda m, a, o, last=last, captured=captured: captured.__setitem__(
                        last, o[0] if isinstance(o, tuple) else o
                    )
                )
            )
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
            for h in handles:
                h.remove()
            for i in range(arch.num_layers):
                if site == "post_attn" or (site == "block_out" and i in captured):
                    acts = captured[i]
                elif site == "block_out":
                    acts = out.hidden_states[i + 1]  # hidden_states[0] is the embedding output
                else:  # pre_attn: what the Q projection sees
                    acts = out.hidden_states[i]
                    if arch.is_decoder:
                        acts = model.get_submodule(f"{arch.layer_path(i)}.input_layernorm")(acts)
                mask = batch["attention_mask"]
                norms = [
                    float(acts[b, t].double().pow(2).sum().sqrt())
                    for b in range(mask.shape[0])
                    for t in range(mask.shape[1])
                    if mask[b, t]
                ]
                totals[i] += sum(norms) / len(norms)
        out_rows.append(totals)
    return out_rows


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", ["post_attn", "pre_attn", "block_out"])
def test_norms_match_independent_computation(tiny_models, family, site):
    tok, model, arch = _load(tiny_models[family])
    batches = _batches(tok)
    stat = activation_norms(model, arch, iter(batches), site, torch.device("cpu"))
    expected = _independent(model, arch, batches, site)
    assert len(stat.raw) == NUM_LAYERS
    assert stat.raw == pytest.approx(expected, rel=1e-5)
    assert stat.batches == 2
    assert stat.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    # the spread over the S batches: the sample standard deviation of the per-batch values / sqrt(S)
    per_batch = _independent_per_batch(model, arch, batches, site)
    spread = [statistics.stdev(b[i] for b in per_batch) / len(per_batch) ** 0.5 for i in range(NUM_LAYERS)]
    # (where LayerNorm pins the norm, the spread is float32 rounding: compare at the raw values' precision)
    assert stat.raw_stderr == pytest.approx(spread, rel=1e-4, abs=1e-6 * max(stat.raw))


def test_hand_worked_norm_with_padding():
    """A hand-checkable case: a model whose attention output is a known constant per token."""
    from actlora_cli.modeling import Architecture
    from actlora_cli.scoring.activation import activation_norms

    class Layer(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.q_proj = torch.nn.Identity()
            self.o_proj = torch.nn.Identity()
            self.scale = scale

        def forward(self, x):
            return self.o_proj(self.q_proj(x) * self.scale)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(1.0), Layer(2.0)])

        def forward(self, input_ids, attention_mask):
            x = (
                input_ids.unsqueeze(-1).float().expand(-1, -1, 2)
            )  # token value v -> vector (v, v), norm v*sqrt2
            for layer in self.layers:
                x = layer(x)
            return x

    arch = Architecture(
        "toy",
        "layers",
        2,
        2,
        {"q": ["layers.0.q_proj", "layers.1.q_proj"], "o": ["layers.0.o_proj", "layers.1.o_proj"]},
        [],
        False,
    )
    ids = torch.tensor([[3, 4, 99], [1, 99, 99]])  # 99 = padding, must be ignored
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    stat = activation_norms(
        Model(), arch, [{"input_ids": ids, "attention_mask": mask}], "post_attn", torch.device("cpu")
    )
    # layer 0: tokens 3, 4, 1 -> norms 3r2, 4r2, 1r2 -> mean 8r2/3 ; layer 1 doubles it
    r2 = 2**0.5
    assert stat.raw == pytest.approx([8 * r2 / 3, 16 * r2 / 3], rel=1e-6)
    assert stat.tokens == 3


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_extra_padding_does_not_change_scores(tiny_models, family):
    tok, model, arch = _load(tiny_models[family])
    short = activation_norms(model, arch, iter(_batches(tok)), "post_attn", torch.device("cpu"))
    long = activation_norms(model, arch, iter(_batches(tok, pad_to=40)), "post_attn", torch.device("cpu"))
    assert long.raw == pytest.approx(short.raw, rel=1e-4)
    assert long.tokens == short.tokens


def test_a_stop_rule_that_never_stops_changes_nothing(tiny_models):
    """The per-batch all-reduce (asked after every batch) gives the one-shot result, bit for bit."""
    tok, model, arch = _load(tiny_models["llama"])
    batches = _batches(tok) + [dict(tok(["great"], return_tensors="pt"))]
    seen = []
    one_shot = activation_norms(model, arch, iter(batches), "post_attn", torch.device("cpu"))
    asked = activation_norms(
        model,
        arch,
        iter(batches),
        "post_attn",
        torch.device("cpu"),
        stop=lambda m: seen.append(len(m)) or False,
    )
    assert seen == [1, 2, 3]
    assert (asked.raw, asked.raw_stderr, asked.tokens, asked.batches) == (
        one_shot.raw,
        one_shot.raw_stderr,
        one_shot.tokens,
        one_shot.batches,
    )
    # a rule that says stop after the second batch: the statistic of the first two batches
    cpu = torch.device("cpu")
    early = activation_norms(model, arch, iter(batches), "post_attn", cpu, stop=lambda m: len(m) == 2)
    first_two = activation_norms(model, arch, iter(batches[:2]), "post_attn", cpu)
    assert (early.raw, early.raw_stderr, early.batches) == (first_two.raw, first_two.raw_stderr, 2)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("site", ["post_attn", "pre_attn", "block_out"])
def test_hooks_removed_after_probe_and_after_error(tiny_models, site):
    tok, model, arch = _load(tiny_models["bert"])
    before = _hook_count(model)
    activation_norms(model, arch, iter(_batches(tok)), site, torch.device("cpu"))
    assert _hook_count(model) == before

    def failing():
        yield _batches(tok)[0]
        raise RuntimeError("data went away")

    with pytest.raises(RuntimeError, match="data went away"):
        activation_norms(model, arch, failing(), site, torch.device("cpu"))
    assert _hook_count(model) == before


def test_probe_runs_without_grad_and_leaves_weights(tiny_models):
    tok, model, arch = _load(tiny_models["deberta-v2"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    activation_norms(model, arch, iter(_batches(tok)), "post_attn", torch.device("cpu"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("examples", "world"), [(0, 1), (1, 2)])
def test_probe_batches_refuse_a_split_that_makes_no_batch(examples, world):
    """No batch in a pass (no examples, or fewer than the ranks) would have the probe loop forever."""
    from actlora_cli.data import Encoded
    from actlora_cli.errors import DataError
    from actlora_cli.probe import probe_batches

    data = Encoded([[1, 2]] * examples, None, torch.zeros(examples, dtype=torch.long), 0)
    with pytest.raises(DataError, match=f"{examples} example\\(s\\) cannot make a probe batch for {world}"):
        next(probe_batches(data, steps=3, batch_size=8, seed=0, world=world))
    assert len(list(probe_batches(Encoded([[1]] * 3, None, torch.zeros(3), 0), 5, 2, 0))) == 5
