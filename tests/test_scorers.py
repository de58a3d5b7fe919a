"""The extra layer scorers (cka, grad_norm, fisher, taylor, weight_delta) against independent computations,
through the real probe and rank stages on every family, and their clean-up (hooks, requires_grad)."""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from actlora_cli.config import Config, ModelSection
from actlora_cli.errors import ModelError
from actlora_cli.modeling import load_model, load_tokenizer, locate
from actlora_cli.probe import run_probe
from actlora_cli.rank import run_rank
from actlora_cli.scoring import SCORERS
from tests.conftest import FAMILIES, NUM_LAYERS, tiny_config

NEW_SCORERS = ("cka", "grad_norm", "fisher", "taylor", "weight_delta")
GRADIENT_KINDS = ("grad_norm", "fisher", "taylor")
ENCODERS = ("bert", "roberta", "deberta-v2")
CPU = torch.device("cpu")

SENTENCES = [  # two batches of different lengths: dynamic padding inside each
    ["good movie", "the plot was very dull and the ending was awful", "great cast", "superb music"],
    [
        "not quite a good film",
        "boring",
        "the actor is lovely and the story is fine but the script is poor",
        "dull",
    ],
]
LABELS = [[1, 0, 1, 1], [0, 0, 1, 0]]


def _load(model_dir, num_labels: int = 2):
    cfg = ModelSection(name=str(model_dir))
    tok = load_tokenizer(cfg)
    if num_labels == 2:
        model = load_model(cfg, num_labels, CPU, pad_token_id=tok.pad_token_id)
    else:  # the tiny models are saved with a 2-class head: a regression head is a fresh one
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels, ignore_mismatched_sizes=True
        ).eval()
    return tok, model, locate(model)


def _batches(tok, regression: bool = False):
    out = []
    for texts, labels in zip(SENTENCES, LABELS, strict=True):
        batch = dict(tok(texts, padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
        out.append(batch)
    assert all((b["attention_mask"] == 0).any() for b in out)  # padding present in every batch
    return out


def _cfg(**probe) -> Config:
    return Config.model_validate({"probe": probe})


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------------------
# Every scorer, every family, through the real stages


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    """A saved peft LoRA adapter (q, v on every layer, lora_B randomised) per family."""
    root = tmp_path_factory.mktemp("adapters")
    return {family: _make_adapter(tiny_models[family], root / family) for family in FAMILIES}


def _make_adapter(model_dir, folder, layers=None, **lora):
    from peft import LoraConfig, get_peft_model

    _, model, arch = _load(model_dir)
    config = LoraConfig(
        r=lora.pop("r", 4),
        lora_alpha=lora.pop("lora_alpha", 16),
        target_modules=[arch.relative("q"), arch.relative("v")],
        layers_to_transform=layers,
        layers_pattern=arch.layers_pattern if layers else None,
        **lora,
    )
    peft_model = get_peft_model(model, config)
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # peft starts B at zero: make the delta nonzero
    peft_model.save_pretrained(folder)
    return folder, peft_model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scorer", NEW_SCORERS)
def test_every_scorer_probes_and_ranks_every_family(
    tiny_models, tiny_task, adapters, tmp_path, family, scorer
):
    probe = {"scorer": scorer}
    if scorer == "weight_delta":
        probe["adapter"] = str(adapters[family][0])
    cfg = Config.model_validate(
        tiny_config(tiny_models[family], tiny_task, tmp_path / "run", probe=probe, rank={"k": 2})
    )
    doc = run_probe(cfg)
    assert doc["scorer"] == scorer and len(doc["raw"]) == len(doc["scores"]) == NUM_LAYERS
    # the degenerate pair: encoders' first-token ([CLS]) embedding is the same vector for every example
    undefined = [0] if scorer == "cka" and family in ENCODERS else []
    assert doc["undefined_layers"] == undefined
    assert all(
        isinstance(v, float) and math.isfinite(v) for i, v in enumerate(doc["raw"]) if i not in undefined
    )
    assert all(0.0 <= s <= 1.0 for s in doc["scores"]) and all(doc["scores"][i] == 0.0 for i in undefined)
    if scorer == "weight_delta":
        assert doc["batches_seen"] == 0 and doc["examples_seen"] == 0
    else:
        assert doc["batches_seen"] == 3 and doc["examples_seen"] == 24 and doc["tokens_seen"] > 24
    selection = run_rank(cfg)
    assert len(selection["layers"]) == 2 and not set(selection["layers"]) & set(undefined)


def test_registry_names_match_the_config_schema():
    from typing import get_args

    from actlora_cli.config import ProbeSection

    assert sorted(SCORERS) == sorted(get_args(ProbeSection.model_fields["scorer"].annotation))


# ---------------------------------------------------------------------------------------------------------
# CKA


def _pool_np(hidden: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    rows = []
    for h, m in zip(hidden, mask, strict=True):
        real = np.flatnonzero(m)
        rows.append(h[0] if how == "first" else h[real[-1]] if how == "last" else h[real].mean(axis=0))
    return np.stack(rows)


def _reference_cka(model, arch, batches, how, final_norm=False):
    """Reference: the full hidden states (output_hidden_states; a plain hook for a decoder's last layer, whose
    hidden_states entry has the final norm applied), pooled in numpy float64, CKA from the stacked matrices.
    Returns 1 - CKA per layer, or None where one side's rows are all the same vector."""
    xs, ys = [[] for _ in range(arch.num_layers)], [[] for _ in range(arch.num_layers)]
    last = arch.num_layers - 1
    for batch in batches:
        captured = {}
        handle = model.get_submodule(arch.layer_path(last)).register_forward_hook(
            lambda m, a, o: captured.__setitem__("out", o[0] if isinstance(o, tuple) else o)  # noqa: B023
        )
        with torch.no_grad():
            states = model(
                **{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True
            ).hidden_states
        handle.remove()
        mask = batch["attention_mask"].numpy()
        for i in range(arch.num_layers):
            out = captured["out"] if i == last and arch.is_decoder and not final_norm else states[i + 1]
            xs[i].append(_pool_np(states[i].double().numpy(), mask, how))
            ys[i].append(_pool_np(out.double().numpy(), mask, how))
    result = []
    for x, y in zip(xs, ys, strict=True):
        x, y = np.concatenate(x), np.concatenate(y)
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        if min(np.linalg.norm(xc) / np.linalg.norm(x), np.linalg.norm(yc) / np.linalg.norm(y)) < 1e-6:
            result.append(None)
            continue
        cka = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
        result.append(1.0 - cka)
    return result


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "llama"])
@pytest.mark.parametrize("pooling", ["first", "last", "mean", "auto"])
def test_cka_matches_independent_float64_computation(tiny_models, family, pooling):
    tok, model, arch = _load(tiny_models[family])
    batches = _batches(tok)
    stat = SCORERS["cka"](model, arch, iter(batches), _cfg(pooling=pooling), CPU)
    how = {"auto": "last" if arch.is_decoder else "first"}.get(pooling, pooling)
    expected = _reference_cka(model, arch, batches, how)
    assert [v is None for v in stat.raw] == [v is None for v in expected]
    for got, want in zip(stat.raw, expected, strict=True):
        if want is not None:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert stat.batches == 2 and stat.examples == 8
    assert stat.tokens == sum(int(b["attention_mask"].sum()) for b in batches)


def test_cka_last_layer_after_the_final_norm(tiny_models):
    """probe.cka_last=final_norm: a decoder's last layer against hidden_states[-1] (after the final norm), as
    the reference code; the other layers unchanged; an encoder has no such norm (a clear error)."""
    tok, model, arch = _load(tiny_models["llama"])
    batches = _batches(tok)
    plain = SCORERS["cka"](model, arch, iter(batches), _cfg(pooling="last"), CPU).raw
    normed = SCORERS["cka"](model, arch, iter(batches), _cfg(pooling="last", cka_last="final_norm"), CPU).raw
    expected = _reference_cka(model, arch, batches, "last", final_norm=True)
    assert normed == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert normed[:-1] == pytest.approx(plain[:-1], rel=1e-12) and normed[-1] != pytest.approx(plain[-1])
    tok, model, arch = _load(tiny_models["bert"])
    with pytest.raises(ModelError, match="no norm after its last layer"):
        SCORERS["cka"](model, arch, iter(_batches(tok)), _cfg(cka_last="final_norm"), CPU)


@pytest.mark.parametrize("family", ENCODERS)
def test_cka_degenerate_encoder_pair(tiny_models, family):
    """[CLS]'s embedding is the same for every example: layer 0 is 0/0 with first-token pooling only."""
    tok, model, arch = _load(tiny_models[family])
    first = SCORERS["cka"](model, arch, iter(_batches(tok)), _cfg(pooling="first"), CPU)
    mean = SCORERS["cka"](model, arch, iter(_batches(tok)), _cfg(pooling="mean"), CPU)
    assert first.raw[0] is None and all(isinstance(v, float) for v in first.raw[1:])
    assert all(isinstance(v, float) and math.isfinite(v) for v in mean.raw)


def _moments(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y = x.double(), y.double()
    return {"n": torch.tensor(float(len(x))), "x": x.sum(0), "y": y.sum(0), "xx": x.T @ x, "yy": y.T @ y,
            "xy": x.T @ y}  # fmt: skip


def test_cka_one_vector_with_rounding_drift_is_undefined_and_real_spread_is_not():
    """The same vector computed by kernels of other batch shapes differs by a few float32 ulps: still one
    vector (undefined, not "maximally dissimilar"); a spread of 1e-4 (far above rounding) is a real one."""
    from actlora_cli.scoring.cka import one_minus_cka

    eps = torch.finfo(torch.float32).eps
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(16, generator=gen) + 3.0
    y = torch.randn(64, 16, generator=gen)
    # every example's vector within 4 ulps of the others (relative), as a different kernel would give
    drift = base * (1 + 4 * eps * torch.randint(-1, 2, (64, 16), generator=gen).float())
    assert one_minus_cka(_moments(drift, y), eps) is None
    spread = base + 1e-4 * base.abs().mean() * torch.randn(64, 16, generator=gen)
    value = one_minus_cka(_moments(spread, y), eps)
    assert value is not None and 0.0 <= value <= 1.0


def test_cka_hand_worked_invariances():
    """CKA is invariant to isotropic scaling and orthogonal maps (score 0) but not to a nonlinear map; the
    toy stack also passes hidden states by keyword and returns tuples, as some families do."""
    from actlora_cli.modeling import Architecture

    torch.manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(6, 6))[0]
    maps = [lambda x: 3.0 * x, lambda x: x @ rotation, lambda x: torch.tanh(2.0 * x) ** 2]

    class Layer(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.q_proj = torch.nn.Identity()
            self.fn = fn

        def forward(self, hidden_states):
            return (self.fn(self.q_proj(hidden_states)),)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(fn) for fn in maps])

        def forward(self, input_ids, attention_mask):
            x = torch.randn(
                *input_ids.shape, 6, generator=torch.Generator().manual_seed(int(input_ids.sum()))
            )
            for layer in self.layers:
                x = layer(hidden_states=x)[0]
            return x

    arch = Architecture("toy", "layers", 3, 6, {"q": [f"layers.{i}.q_proj" for i in range(3)]}, [], False)
    batches = [
        {"input_ids": torch.full((5, 3), s), "attention_mask": torch.ones(5, 3, dtype=torch.long)}
        for s in (1, 2, 3)
    ]
    model = Model()
    stat = SCORERS["cka"](model, arch, iter(batches), _cfg(pooling="mean"), CPU)
    assert stat.raw[0] == pytest.approx(0.0, abs=1e-12) and stat.raw[1] == pytest.approx(0.0, abs=1e-12)
    assert stat.raw[2] > 0.05
    assert stat.examples == 15 and stat.tokens == 45 and _hook_count(model) == 0


# ---------------------------------------------------------------------------------------------------------
# Gradient scorers


def _reference_gradient_stats(model, arch, batches, targets, regression):
    """Reference: per batch, torch.autograd.grad of the loss with respect to every layer's target weights,
    each statistic in float64, averaged over the batches."""
    model.eval()
    weights = [
        [model.get_submodule(arch.projections[t][i]).weight for t in targets] for i in range(arch.num_layers)
    ]
    for w in (w for layer in weights for w in layer):
        w.requires_grad_(True)
    totals = {kind: np.zeros(arch.num_layers) for kind in GRADIENT_KINDS}
    by_target = {kind: {t: np.zeros(arch.num_layers) for t in targets} for kind in GRADIENT_KINDS}
    per_batch = {kind: [] for kind in GRADIENT_KINDS}
    for batch in batches:
        before = {kind: t.copy() for kind, t in totals.items()}
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        labels = batch["labels"]
        loss = F.mse_loss(logits.squeeze(-1), labels) if regression else F.cross_entropy(logits, labels)
        for i, layer in enumerate(weights):
            grads = torch.autograd.grad(loss, layer, retain_graph=True)
            for target, w, g in zip(targets, layer, grads, strict=True):
                w64, g64 = w.detach().double(), g.double()
                values = {
                    "grad_norm": float(g64.pow(2).sum().sqrt()),
                    "fisher": float(g64.pow(2).sum()),
                    "taylor": float((w64 * g64).abs().sum()),
                }
                for kind, value in values.items():
                    totals[kind][i] += value
                    by_target[kind][target][i] += value / len(batches)
        for kind in GRADIENT_KINDS:
            per_batch[kind].append(totals[kind] - before[kind])
    means = {kind: (t / len(batches)).tolist() for kind, t in totals.items()}
    return means, {kind: np.stack(rows) for kind, rows in per_batch.items()}, by_target


@pytest.mark.parametrize(
    "family,targets,num_labels",
    [
        ("bert", ["q", "v"], 2),
        ("deberta-v2", ["q", "v"], 2),
        ("llama", ["q", "v"], 2),
        ("qwen2", ["q", "k", "v", "o"], 2),
        ("roberta", ["q", "v"], 1),
    ],
)
def test_gradient_scorers_match_hand_autograd(tiny_models, family, targets, num_labels):
    tok, model, arch = _load(tiny_models[family], num_labels)
    batches = _batches(tok, regression=num_labels == 1)
    expected, rows, by_target = _reference_gradient_stats(model, arch, batches, targets, num_labels == 1)
    cfg = Config.model_validate({"lora": {"targets": targets}})
    for kind in GRADIENT_KINDS:
        stat = SCORERS[kind](model, arch, iter(batches), cfg, CPU)
        assert stat.raw == pytest.approx(expected[kind], rel=1e-6), kind
        # per projection (Table 11's Q and V rows): each target's weights alone
        assert list(stat.by_target) == targets
        for target in targets:
            assert stat.by_target[target] == pytest.approx(by_target[kind][target].tolist(), rel=1e-6)
        # the per-batch values and their standard error over the S batches, as activation norms record them
        np.testing.assert_allclose(stat.per_batch, rows[kind], rtol=1e-6)
        np.testing.assert_allclose(stat.raw_stderr, rows[kind].std(axis=0, ddof=1) / np.sqrt(2), rtol=1e-5)
        assert stat.batches == 2 and stat.examples == 8
        assert stat.tokens == sum(int(b["attention_mask"].sum()) for b in batches)


def test_gradient_scorer_matches_module_suffix_targets(tiny_models):
    """A target given as a module-name suffix picks the same weights as its logical name."""
    tok, model, arch = _load(tiny_models["bert"])
    logical = SCORERS["fisher"](model, arch, iter(_batches(tok)), Config.model_validate({}), CPU)
    suffix = SCORERS["fisher"](
        model,
        arch,
        iter(_batches(tok)),
        Config.model_validate({"lora": {"targets": ["query", "value"]}}),
        CPU,
    )
    assert suffix.raw == logical.raw


def test_gradient_scorers_restore_state_and_write_no_grad(tiny_models):
    tok, model, arch = _load(tiny_models["bert"])
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("classifier"))  # an arbitrary pattern to restore
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    hooks = _hook_count(model)
    model.train()
    SCORERS["taylor"](model, arch, iter(_batches(tok)), Config.model_validate({}), CPU)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and _hook_count(model) == hooks


@pytest.mark.parametrize("scorer", ["cka", "grad_norm"])
def test_state_restored_after_an_error(tiny_models, scorer):
    tok, model, arch = _load(tiny_models["llama"])
    flags = [p.requires_grad for p in model.parameters()]
    hooks = _hook_count(model)

    def failing():
        yield _batches(tok)[0]
        raise RuntimeError("data went away")

    with pytest.raises(RuntimeError, match="data went away"):
        SCORERS[scorer](model, arch, failing(), Config.model_validate({}), CPU)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert _hook_count(model) == hooks


def test_gradient_scorer_names_a_target_that_matches_nothing(tiny_models):
    tok, model, arch = _load(tiny_models["bert"])
    with pytest.raises(ModelError, match="lora.targets"):
        SCORERS["grad_norm"](
            model,
            arch,
            iter(_batches(tok)),
            Config.model_validate({"lora": {"targets": ["no_such_proj"]}}),
            CPU,
        )


# ---------------------------------------------------------------------------------------------------------
# Weight delta


def _reference_delta(peft_model, arch, per_module: dict | None = None):
    """Reference: ||scaling * B @ A||_F formed explicitly from the live peft modules, summed per layer (and
    each module's own norm into ``per_module`` by its name's last part, e.g. 'query')."""
    out = [None] * arch.num_layers
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            layer = int(name.split(f".{arch.layers_pattern}.", 1)[1].split(".", 1)[0])
            a, b = (
                module.lora_A["default"].weight.detach().double(),
                module.lora_B["default"].weight.detach().double(),
            )
            norm = float(torch.linalg.matrix_norm(module.scaling["default"] * (b @ a)))
            out[layer] = (out[layer] or 0.0) + norm
            if per_module is not None:
                per_module.setdefault(name.rsplit(".", 1)[1], [None] * arch.num_layers)[layer] = norm
    return out


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_weight_delta_matches_hand_computation(tiny_models, adapters, family):
    folder, peft_model = adapters[family]
    _, model, arch = _load(tiny_models[family])
    stat = SCORERS["weight_delta"](
        model, arch, iter(()), _cfg(scorer="weight_delta", adapter=str(folder)), CPU
    )
    per_module = {}
    expected = _reference_delta(peft_model, arch, per_module)
    assert all(v is not None for v in expected)
    assert stat.raw == pytest.approx(expected, rel=1e-6)
    # per projection, keyed by the logical name
    assert sorted(stat.by_target) == ["q", "v"]
    for logical in ("q", "v"):
        assert stat.by_target[logical] == pytest.approx(
            per_module[arch.relative(logical).split(".")[-1]], rel=1e-6
        )
    assert stat.batches == 0 and stat.examples == 0


def test_weight_delta_partial_adapter_rslora_and_alpha_pattern(tiny_models, tmp_path):
    """Layers without adapters are undefined; rsLoRA scaling, rank_pattern and alpha_pattern follow peft."""
    _, model, arch = _load(tiny_models["deberta-v2"])
    folder, peft_model = _make_adapter(
        tiny_models["deberta-v2"],
        tmp_path / "adapter",
        layers=[1, 3],
        use_rslora=True,
        rank_pattern={f"layer.3.{arch.relative('q')}": 2},
        alpha_pattern={arch.relative("v"): 5},
    )
    stat = SCORERS["weight_delta"](
        model, arch, iter(()), _cfg(scorer="weight_delta", adapter=str(folder)), CPU
    )
    expected = _reference_delta(peft_model, arch)
    # undefined layers are None on both sides; approx compares only numbers (pytest 9.2 rejects None in it)
    assert (
        [i for i, v in enumerate(stat.raw) if v is None]
        == [i for i, v in enumerate(expected) if v is None]
        == [0, 2]
    )
    assert [stat.raw[i] for i in (1, 3)] == pytest.approx([expected[i] for i in (1, 3)], rel=1e-6)
    assert (
        peft_model.get_submodule(f"base_model.model.{arch.projections['v'][1]}").scaling["default"] == 5 / 2
    )


def test_weight_delta_rejects_an_adapter_for_another_model(tiny_models, adapters):
    _, model, arch = _load(tiny_models["bert"])
    with pytest.raises(ModelError, match="probe.adapter"):
        SCORERS["weight_delta"](
            model, arch, iter(()), _cfg(scorer="weight_delta", adapter=str(adapters["llama"][0])), CPU
        )


def test_weight_delta_rejects_dora(tiny_models, tmp_path):
    folder, _ = _make_adapter(tiny_models["bert"], tmp_path / "dora", use_dora=True)
    _, model, arch = _load(tiny_models["bert"])
    with pytest.raises(ModelError, match="DoRA"):
        SCORERS["weight_delta"](model, arch, iter(()), _cfg(scorer="weight_delta", adapter=str(folder)), CPU)


# ---------------------------------------------------------------------------------------------------------
# DDP: two gloo ranks, each scoring half of every batch, agree with one process scoring the whole batches


def _ddp_worker(rank: int, world: int, port: int, model_dir: str, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tok, model, arch = _load(model_dir)
        shares = [{k: v[rank::world] for k, v in b.items()} for b in _batches(tok)]
        cfg = _cfg(pooling="mean")
        result = {}
        for name in ("cka", *GRADIENT_KINDS):
            stat = SCORERS[name](model, arch, iter(shares), cfg, CPU)
            result[name] = [stat.raw, stat.examples, stat.tokens]
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_ranks_agree_with_one_process(tiny_models, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tiny_models["bert"]), str(out)), nprocs=2)
    two = json.loads(out.read_text())
    tok, model, arch = _load(tiny_models["bert"])
    batches = _batches(tok)
    for name in ("cka", *GRADIENT_KINDS):
        one = SCORERS[name](model, arch, iter(batches), _cfg(pooling="mean"), CPU)
        raw, examples, tokens = two[name]
        assert (examples, tokens) == (one.examples, one.tokens)
        assert tokens == sum(int(b["attention_mask"].sum()) for b in batches) and examples == 8
        assert raw == pytest.approx(one.raw, rel=1e-5), name
