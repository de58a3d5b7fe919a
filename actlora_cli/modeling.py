"""Load the model and tokenizer (hub id, local folder, packaged MiniLM, random init) and locate, for any
supported family, the layer stack, each layer's Q/K/V/O projections and the probe point of each site.

Supported: sequence classifiers of BERT, RoBERTa, DeBERTa-v2/v3 and the Llama family (Llama, Mistral, Qwen2).
The locator is generic (it searches module names), so close relatives usually work too; an architecture it
cannot read gets an error that lists what it found.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import packaged, ui
from .config import PACKAGED_PREFIX, ModelSection
from .errors import ConfigError, ModelError, Problem

# Leaf names of each logical projection inside a layer, across families.
PROJECTION_NAMES: dict[str, tuple[str, ...]] = {
    "q": ("query", "query_proj", "q_proj"),
    "k": ("key", "key_proj", "k_proj"),
    "v": ("value", "value_proj", "v_proj"),
    # the attention block's output projection: its output is the attention output before the residual add
    "o": ("attention.output.dense", "o_proj", "out_proj"),
}
DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2"}
Site = Literal["post_attn", "pre_attn", "block_out"]


@dataclass(frozen=True)
class Architecture:
    """Where things are in a loaded model; every name is a full ``named_modules`` path."""

    model_type: str
    stack_path: str  # e.g. "bert.encoder.layer"
    num_layers: int
    hidden_size: int
    projections: dict[str, list[str]]  # logical name (q, k, v, o) -> module path per layer
    head_modules: list[str]  # top-level modules trained with the adapters (the task head)
    is_decoder: bool

    @property
    def layers_pattern(self) -> str:
        """The name peft's ``layers_pattern`` needs (the stack's attribute name: layer, layers, ...)."""
        return self.stack_path.rsplit(".", 1)[-1]

    def layer_path(self, index: int) -> str:
        return f"{self.stack_path}.{index}"

    def relative(self, logical: str) -> str:
        """Path of a projection relative to its layer, e.g. q -> attention.self.query."""
        prefix = self.layer_path(0) + "."
        return self.projections[logical][0][len(prefix) :]

    def probe_point(self, site: Site, index: int) -> tuple[str, Literal["input", "output"]]:
        """The module to hook for ``site`` in layer ``index``, and whether its input or output is read."""
        if site == "post_attn":
            return self.projections["o"][index], "output"
        if site == "pre_attn":
            return self.projections["q"][index], "input"
        return self.layer_path(index), "output"

    def identity(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
        }


def resolve_source(cfg: ModelSection) -> str:
    """The path or hub id ``from_pretrained`` is given."""
    if cfg.name.startswith(PACKAGED_PREFIX):
        return packaged.resolve(cfg.name[len(PACKAGED_PREFIX) :])
    path = Path(cfg.name).expanduser()
    return str(path) if path.is_dir() else cfg.name


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The config's dtype vocabulary (model.dtype, train.precision, train.prefix_cache_dtype) -> torch.
    auto: bf16 on CUDA where supported, fp16 on other CUDA, fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return TORCH_DTYPES[name]


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a grad scaler is needed: fp16 on CUDA only)."""
    dtype = torch_dtype(precision, device)
    if dtype == torch.float32:
        return None, False
    return dtype, dtype == torch.float16 and device.type == "cuda"


def autocast_context(amp_dtype: torch.dtype | None, device: torch.device):
    """A factory of the autocast context for ``amp_dtype`` (a no-op context for fp32)."""
    if amp_dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=amp_dtype)


@contextlib.contextmanager
def _friendly_load_errors(cfg: ModelSection, what: str):
    try:
        yield
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        fix = (
            "check the hub id and your network (HF_HUB_OFFLINE=1 is set)"
            if offline
            else "check the hub id or folder; offline, use a local folder or packaged:all-MiniLM-L6-v2"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            Problem("model.name", f"cannot load the {what} of '{cfg.name}': {first}", fix)
        ) from exc


def load_tokenizer(cfg: ModelSection):
    """The tokenizer, with a pad token (decoders: the eos token) and right padding."""
    from transformers import AutoTokenizer

    with _friendly_load_errors(cfg, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(
            resolve_source(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(Problem("model.name", "the tokenizer has neither a pad nor an eos token", ""))
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def declared_layers(cfg: ModelSection) -> int | None:
    """The layer count the model's config declares, read without loading weights; None where the config
    cannot be had here (a hub id offline, a model without ``num_hidden_layers``): callers then check later."""
    from transformers import AutoConfig

    try:
        source = resolve_source(cfg)
        config = AutoConfig.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception:  # noqa: BLE001 (offline, gated, unknown: the full load reports it properly)
        return None
    layers = getattr(config, "num_hidden_layers", None)
    return layers if isinstance(layers, int) else None


def load_model(
    cfg: ModelSection, num_labels: int, device: torch.device, pad_token_id: int | None = None
) -> nn.Module:
    """A sequence classifier with ``num_labels`` outputs (1 = regression), in eval mode, on ``device``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    source = resolve_source(cfg)
    dtype = torch_dtype(cfg.dtype, device)
    extra: dict[str, Any] = {"num_labels": num_labels}
    if num_labels == 1:
        extra["problem_type"] = "regression"
    if pad_token_id is not None:
        extra["pad_token_id"] = pad_token_id
    with _friendly_load_errors(cfg, "model"):
        hf_config = AutoConfig.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **extra
        )
        if cfg.random_init:
            model = AutoModelForSequenceClassification.from_config(
                hf_config, trust_remote_code=cfg.trust_remote_code, dtype=dtype
            )
        else:
            if cfg.quantization == "nf4":
                extra_load = {"quantization_config": nf4_config(), "device_map": {"": device}}
            else:
                extra_load = {}
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    source,
                    config=hf_config,
                    revision=cfg.revision,
                    trust_remote_code=cfg.trust_remote_code,
                    dtype=dtype,
                    # a checkpoint with another head (another label count) gets a new head, like a base model
                    ignore_mismatched_sizes=True,
                    **extra_load,
                )
            finally:
                hf_logging.set_verbosity(verbosity)
    if cfg.quantization == "none":
        model = model.to(device)
    return model.eval()


# The task head (and DeBERTa's pooler) stays in full precision: it is trained, and it is tiny.
HEAD_NAMES = ["classifier", "score", "pooler"]


def nf4_config():
    """QLoRA's base: 4-bit NF4 weights with double quantisation, bf16 compute, the head kept out of 4-bit."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(
            Problem(
                "model.quantization", "nf4 needs bitsandbytes", "pip install 'actlora[qlora]' (CUDA machines)"
            )
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=HEAD_NAMES,
    )


def _find_stack(model: nn.Module, num_layers: int | None) -> tuple[str, nn.ModuleList]:
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            first = dict(module[0].named_modules())
            if any(n.rsplit(".", 1)[-1] in PROJECTION_NAMES["q"] for n in first):
                candidates.append((name, module))
    if num_layers is not None:
        exact = [c for c in candidates if len(c[1]) == num_layers]
        candidates = exact or candidates
    if len(candidates) != 1:
        lists = [f"{n} ({len(m)})" for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
        raise ModelError(
            Problem(
                "model",
                f"cannot find the transformer layer stack of {type(model).__name__}: "
                f"{len(candidates)} module lists hold query projections; module lists found: "
                f"{', '.join(lists) or 'none'}",
                "supported: BERT, RoBERTa, DeBERTa-v2/v3, Llama, Mistral, Qwen2 sequence classifiers",
            )
        )
    return candidates[0]


def _find_projection(layer: nn.Module, names: tuple[str, ...]) -> str | None:
    found = [
        n
        for n, m in layer.named_modules()
        if isinstance(m, nn.Linear) and any(n == want or n.endswith("." + want) for want in names)
    ]
    return found[0] if len(found) == 1 else None


def locate(model: nn.Module) -> Architecture:
    """Find the layer stack, projections and head of a (possibly peft-wrapped) sequence classifier."""
    config = model.config
    num_layers = getattr(config, "num_hidden_layers", None)
    stack_path, stack = _find_stack(model, num_layers)
    projections: dict[str, list[str]] = {}
    for logical, names in PROJECTION_NAMES.items():
        relative = _find_projection(stack[0], names)
        if relative is None:
            if logical in ("q", "v", "o"):
                found = [n for n, m in stack[0].named_modules() if isinstance(m, nn.Linear)]
                raise ModelError(
                    Problem(
                        "model",
                        f"cannot find the '{logical}' projection ({' or '.join(names)}) in {stack_path}.0 of "
                        f"{type(model).__name__}; its linear layers: {', '.join(found)}",
                        "use a supported family or name the projections in lora.targets",
                    )
                )
            continue
        projections[logical] = [f"{stack_path}.{i}.{relative}" for i in range(len(stack))]
    backbone = stack_path.split(".", 1)[0]
    head = [
        name
        for name, child in model.named_children()
        if name != backbone and any(True for _ in child.parameters())
    ]
    model_type = getattr(config, "model_type", type(model).__name__)
    return Architecture(
        model_type=model_type,
        stack_path=stack_path,
        num_layers=len(stack),
        hidden_size=int(getattr(config, "hidden_size", 0)),
        projections=projections,
        head_modules=head,
        is_decoder=model_type in DECODER_TYPES,
    )


def target_suffixes(arch: Architecture, targets: list[str]) -> list[str]:
    """lora.targets (logical names or module suffixes) -> module paths relative to a layer."""
    out = []
    for target in targets:
        if target in PROJECTION_NAMES:
            if target not in arch.projections:
                raise ModelError(
                    Problem("lora.targets", f"this {arch.model_type} model has no '{target}' projection", "")
                )
            out.append(arch.relative(target))
        else:
            out.append(target)
    return out


@dataclass
class Loaded:
    """A model ready for a stage: the module, its tokenizer and located architecture, and its device."""

    model: nn.Module
    tokenizer: Any
    arch: Architecture
    device: torch.device
    seconds: float


def load_for(
    cfg: ModelSection, num_labels: int, device: torch.device, model_cfg: ModelSection | None = None
) -> Loaded:
    """Tokenizer, model (on ``device``, the one distributed.setup chose) and its located architecture; the
    weights come from ``model_cfg`` when given (a fully fine-tuned model beside its base's tokenizer)."""
    start = time.perf_counter()
    with ui.status(f"loading {(model_cfg or cfg).name} ..."):
        tokenizer = load_tokenizer(cfg)
        model = load_model(model_cfg or cfg, num_labels, device, pad_token_id=tokenizer.pad_token_id)
    return Loaded(model, tokenizer, locate(model), device, time.perf_counter() - start)


def checkpoint_layers(model: nn.Module, arch: Architecture, lowest: int) -> list[int]:
    """train.gradient_checkpointing: layers ``lowest`` and up (every layer the backward passes through) keep
    only their inputs in the forward and recompute the rest in the backward, through
    ``torch.utils.checkpoint`` without reentrancy; returns those layers.

    Not ``model.gradient_checkpointing_enable()``: for a text model it also calls
    ``enable_input_require_grads()``, which makes the embeddings' output require grad and takes the backward
    down to layer 0, undoing the cut; and reentrant checkpointing (peft's and older transformers' default)
    needs an input that requires grad for the same reason. The non-reentrant kind needs neither, so the
    layers below ``lowest`` stay out of the graph as without checkpointing. The switch set here, per layer, is
    the one transformers' own enable sets on its ``GradientCheckpointingLayer``s."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    span = list(range(lowest, arch.num_layers))
    for i in span:
        layer = inner.get_submodule(arch.layer_path(i))
        if not isinstance(layer, GradientCheckpointingLayer):
            raise ConfigError([Problem(
                "train.gradient_checkpointing",
                f"{type(layer).__name__} ({arch.model_type}) does not support activation checkpointing in "
                "this transformers version",
                "set train.gradient_checkpointing=false",
            )])  # fmt: skip
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    return span
