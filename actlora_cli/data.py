"""Tasks and batches: the GLUE table, local files, the packaged sentiment tasks, custom tasks (local files or
a ``datasets`` id, labels as ids or names), tokenisation once up front, and dynamic-padding batches
(optionally grouped by length) that shard cleanly across DDP ranks."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import sentiment_data
from .config import TaskSection
from .errors import DataError, Problem


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its text fields, label, metrics and splits, and where its files live."""

    name: str
    source: str  # glue | packaged | custom
    text_fields: tuple[str, ...]
    label_field: str
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    # local GLUE TSVs: split -> file name, column renames to the hub's field names, string labels -> ids
    tsv_files: dict[str, str] = field(default_factory=dict)
    tsv_header: bool = True
    tsv_columns: tuple[str, ...] | None = None
    tsv_rename: dict[str, str] = field(default_factory=dict)
    label_names: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


def _glue(name, fields, labels, metrics, *, eval_splits=("validation",), files=None, **tsv) -> TaskSpec:
    default_files = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    return TaskSpec(
        name=name,
        source="glue",
        text_fields=fields,
        label_field="label",
        num_labels=labels,
        metrics=metrics,
        eval_splits=eval_splits,
        tsv_files=files or default_files,
        **tsv,
    )


NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _glue(
        "cola",
        ("sentence",),
        2,
        ("matthews",),
        tsv_header=False,
        tsv_columns=("source", "label", "orig", "sentence"),
    ),
    "sst2": _glue("sst2", ("sentence",), 2, ("accuracy",)),
    "mrpc": _glue(
        "mrpc",
        ("sentence1", "sentence2"),
        2,
        ("accuracy", "f1"),
        tsv_rename={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
    ),
    "qqp": _glue(
        "qqp", ("question1", "question2"), 2, ("accuracy", "f1"), tsv_rename={"is_duplicate": "label"}
    ),
    "stsb": _glue(
        "stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), tsv_rename={"score": "label"}
    ),
    "mnli": _glue(
        "mnli",
        ("premise", "hypothesis"),
        3,
        ("accuracy",),
        eval_splits=("validation_matched", "validation_mismatched"),
        files={
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
        },
        tsv_rename={"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
        label_names=NLI3,
    ),
    "qnli": _glue("qnli", ("question", "sentence"), 2, ("accuracy",), label_names=NLI2),
    "rte": _glue("rte", ("sentence1", "sentence2"), 2, ("accuracy",), label_names=NLI2),
    "wnli": _glue("wnli", ("sentence1", "sentence2"), 2, ("accuracy",)),
}
HUB_GLUE = "nyu-mll/glue"

SENTIMENT_DOMAINS = ("movies", "tweets", "amazon", "nyt")


def _packaged(domain: str, regression: bool) -> TaskSpec:
    return TaskSpec(
        name=f"{domain}-rating" if regression else domain,
        source="packaged",
        text_fields=("text",),
        label_field="rating" if regression else "label",
        num_labels=1 if regression else 2,
        metrics=("pearson", "spearman") if regression else ("accuracy", "f1"),
    )


PACKAGED_TASKS: dict[str, TaskSpec] = {
    spec.name: spec for d in SENTIMENT_DOMAINS for spec in (_packaged(d, False), _packaged(d, True))
}


def task_spec(cfg: TaskSection) -> TaskSpec:
    """The spec of the configured task (GLUE, packaged or custom)."""
    if cfg.name in GLUE_TASKS:
        return GLUE_TASKS[cfg.name]
    if cfg.name in PACKAGED_TASKS:
        return PACKAGED_TASKS[cfg.name]
    if cfg.name == "custom":
        assert cfg.text_fields and cfg.label_field and cfg.num_labels and (cfg.files or cfg.dataset)
        metrics = (
            ("pearson", "spearman")
            if cfg.num_labels == 1
            else ("accuracy", "f1")
            if cfg.num_labels == 2
            else ("accuracy",)
        )
        if cfg.files is not None:
            evals = tuple(s for s in cfg.files if s != cfg.train_split) or (cfg.train_split,)
        else:
            evals = ("validation",)
        spec = TaskSpec(
            "custom", "custom", tuple(cfg.text_fields), cfg.label_field, cfg.num_labels, metrics, evals
        )
        return spec if spec.is_regression else replace(spec, label_names=custom_label_names(cfg, spec))
    known = sorted(GLUE_TASKS) + sorted(PACKAGED_TASKS) + ["custom"]
    import difflib

    close = difflib.get_close_matches(cfg.name, known, n=1)
    raise DataError(
        Problem(
            "task.name",
            f"unknown task '{cfg.name}'",
            f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}",
        )
    )


def eval_splits(cfg: TaskSection, spec: TaskSpec) -> tuple[str, ...]:
    return (cfg.eval_split,) if cfg.eval_split else spec.eval_splits


def custom_label_names(cfg: TaskSection, spec: TaskSpec) -> tuple[str, ...] | None:
    """A custom classification task's class names, index = class id: the names a ``datasets`` ClassLabel
    declares, in its order; for string labels, the training split's distinct labels, sorted (the same ids
    on every run and machine); None when every training label is a number (the class ids as given). Every
    evaluated split's labels must occur in training: a class the model never saw has no id."""
    frame, train_where, declared = _custom_table(cfg, spec, cfg.train_split)
    _check_columns(frame, spec, train_where)
    values = frame[spec.label_field].tolist()
    if declared is None and all(map(_is_number, values)):
        return None
    names = declared or tuple(sorted({str(v) for v in values}))
    if len(names) != spec.num_labels:
        found = f"{len(names)} distinct label{'s' if len(names) > 1 else ''}"
        raise DataError(
            Problem(
                "task.num_labels",
                f"{spec.num_labels}, but {train_where} holds {found}: {_shown(names)}",
                f"set task.num_labels: {len(names)}"
                if len(names) > 1
                else "a classifier needs two or more classes: check task.label_field",
            )
        )
    for split in eval_splits(cfg, spec):
        if split != cfg.train_split:
            frame, where, _ = _custom_table(cfg, spec, split)
            _check_columns(frame, spec, where)
            _check_known(frame[spec.label_field].tolist(), names, where)
    return names


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _shown(names: tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")


def _check_known(values: list, names: tuple[str, ...], where: str) -> None:
    unknown = sorted({str(v) for v in values} - set(names))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise DataError(
            Problem(
                where,
                f"label {unknown[0]!r}{more} does not occur in the training split",
                f"the training labels are {_shown(names)}: correct the label, or add training examples of it",
            )
        )


# ---------------------------------------------------------------------------------------------------------
# Reading examples


@dataclass
class Examples:
    """Raw examples of one split: text columns and labels (ints, or floats for regression)."""

    texts: list[list[str]]  # one list per text field
    labels: list[float] | list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Examples:
        if n is None or n >= len(self):
            return self
        return Examples([col[:n] for col in self.texts], self.labels[:n])


def read_table(path: Path, *, header: bool = True, columns: tuple[str, ...] | None = None):
    """A local file as a pandas DataFrame, by extension: .tsv, .csv, .jsonl/.json, .parquet."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".tsv":
            # GLUE TSVs contain unbalanced quotes: read them verbatim, as the GLUE loaders do
            return pd.read_csv(
                path,
                sep="\t",
                quoting=csv.QUOTE_NONE,
                header=0 if header else None,
                names=list(columns) if columns else None,
                keep_default_na=False,
                dtype=str,
                on_bad_lines="skip",
            )
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl" or _is_json_lines(path))
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise DataError(Problem(str(path), f"cannot read: {exc}", "check the file's format")) from None
    raise DataError(
        Problem(str(path), f"unknown file type '{suffix}'", "use .tsv, .csv, .jsonl, .json or .parquet")
    )


def _is_json_lines(path: Path) -> bool:
    with path.open() as handle:
        return not handle.read(1).lstrip().startswith("[")


def _check_columns(frame, spec: TaskSpec, where: str) -> None:
    missing = [c for c in (*spec.text_fields, spec.label_field) if c not in frame.columns]
    if missing:
        raise DataError(
            Problem(
                where,
                f"missing column(s) {', '.join(missing)}",
                f"columns present: {', '.join(map(str, frame.columns))}",
            )
        )


def _frame_to_examples(frame, spec: TaskSpec, where: str) -> Examples:
    frame = frame.rename(columns=spec.tsv_rename)
    _check_columns(frame, spec, where)
    labels_raw = frame[spec.label_field].tolist()
    if spec.is_regression:
        try:
            labels: list = [float(x) for x in labels_raw]
        except ValueError as exc:
            raise DataError(
                Problem(where, f"non-numeric regression target ({exc})", "the label column must hold numbers")
            ) from None
    elif spec.source == "custom" and spec.label_names is not None:
        # a custom task's names are exactly its classes: a number among them is a name, never an id
        _check_known(labels_raw, spec.label_names, where)
        index = {name: i for i, name in enumerate(spec.label_names)}
        labels = [index[str(x)] for x in labels_raw]
    elif spec.label_names is not None:
        index = {name: i for i, name in enumerate(spec.label_names)}
        unknown = sorted(
            {str(x) for x in labels_raw if str(x) not in index and not str(x).lstrip("-").isdigit()}
        )
        if unknown:
            raise DataError(
                Problem(where, f"unknown labels {unknown[:5]}", f"expected {', '.join(spec.label_names)}")
            )
        labels = [index[str(x)] if str(x) in index else int(x) for x in labels_raw]
    else:
        try:
            labels = [int(float(x)) for x in labels_raw]
        except ValueError as exc:
            raise DataError(
                Problem(where, f"non-numeric label ({exc})", "labels must be class ids 0..n-1")
            ) from None
    if not spec.is_regression:
        bad = [x for x in labels if not 0 <= x < spec.num_labels]
        if bad:
            raise DataError(
                Problem(
                    where,
                    f"label {bad[0]} outside 0..{spec.num_labels - 1}",
                    "fix task.num_labels; GLUE test splits have no labels (-1): evaluate on validation",
                )
            )
    texts = [[str(t) for t in frame[f].tolist()] for f in spec.text_fields]
    return Examples(texts, labels)


def load_domain_split(spec: TaskSpec, split: str, data_dir: str | None) -> Examples:
    """Examples of a packaged task's split, fetching the data on first use: every sentence with its mean
    rating for a ``-rating`` task, the sentences outside the neutral band with their label otherwise."""
    rows = sentiment_data.read_split(spec.name.removesuffix("-rating"), split, data_dir)
    if rows is None:
        raise DataError(
            Problem("task", f"packaged task {spec.name} has no split '{split}'", "splits: train, validation")
        )
    if not spec.is_regression:
        rows = [r for r in rows if r["label"] is not None]
    return Examples([[r["text"] for r in rows]], [r[spec.label_field] for r in rows])


def load_examples(cfg: TaskSection, spec: TaskSpec, split: str) -> Examples:
    """Examples of ``split``: hub (GLUE online), GLUE TSVs in task.data_dir, packaged cache, or custom
    files. A split without examples is a DataError naming where it was read from (a probe would otherwise
    wait forever for a first batch)."""
    limit = cfg.max_train_examples if split == cfg.train_split else cfg.max_eval_examples
    examples, where = _read_split(cfg, spec, split)
    if len(examples) == 0:
        fix = (
            f"add examples below the header, or point task.files.{split} at another file"
            if spec.source == "custom"
            else "prepare the data again (for a packaged task: `actlora data fetch --force`)"
        )
        raise DataError(Problem(where, f"split '{split}' has no examples", fix))
    return examples.head(limit)


def _read_split(cfg: TaskSection, spec: TaskSpec, split: str) -> tuple[Examples, str]:
    """Every example of ``split``, and where they were read from."""
    if spec.source == "custom":
        frame, where, _ = _custom_table(cfg, spec, split)
        return _frame_to_examples(frame, spec, where), where
    if spec.source == "packaged":
        domain = spec.name.removesuffix("-rating")
        where = str(sentiment_data.cache_dir(cfg.data_dir) / domain / f"{split}.jsonl")
        return load_domain_split(spec, split, cfg.data_dir), where
    if cfg.data_dir is not None:
        if split not in spec.tsv_files:
            raise DataError(
                Problem(
                    "task.eval_split",
                    f"{spec.name} has no split '{split}'",
                    f"splits: {', '.join(spec.tsv_files)}",
                )
            )
        path = Path(cfg.data_dir).expanduser() / spec.tsv_files[split]
        if not path.is_file():
            raise DataError(
                Problem(
                    "task.data_dir",
                    f"{path} not found",
                    f"the GLUE {spec.name} folder needs {spec.tsv_files[split]}",
                )
            )
        frame = read_table(path, header=spec.tsv_header, columns=spec.tsv_columns)
        return _frame_to_examples(frame, spec, str(path)), str(path)
    return _load_hub(spec, split), f"{HUB_GLUE}/{spec.name}/{split}"


def _custom_table(cfg: TaskSection, spec: TaskSpec, split: str) -> tuple[Any, str, tuple[str, ...] | None]:
    """A custom task's split as a DataFrame, where it was read from, and the class names its source
    declares (a ``datasets`` ClassLabel; its ids are then given as those names)."""
    if cfg.files is not None:
        if split not in cfg.files:
            raise DataError(
                Problem("task.files", f"no file for split '{split}'", f"splits given: {', '.join(cfg.files)}")
            )
        path = Path(cfg.files[split]).expanduser()
        return read_table(path), str(path), None
    assert cfg.dataset is not None
    where = f"{cfg.dataset}{'' if cfg.dataset_config is None else f' ({cfg.dataset_config})'}, split {split}"
    try:
        import datasets

        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split)
    except Exception as exc:  # noqa: BLE001 (offline: ConnectionError; unknown split or config: ValueError; ...)
        raise DataError(
            Problem(
                "task.dataset",
                f"cannot load {where} ({type(exc).__name__}: {str(exc)[:200]})",
                "check task.dataset, task.dataset_config and the split (task.train_split, task.eval_split); "
                "offline, give task.dataset a local folder of data files (train.csv, validation.csv, ...) or "
                "use task.files",
            )
        ) from None
    frame = ds.to_pandas()
    feature = ds.features.get(spec.label_field)
    if not isinstance(feature, datasets.ClassLabel):
        return frame, where, None
    names = tuple(feature.names)
    # ids as names, so that every source reaches the model through the one name -> id map (-1, an unlabelled
    # example, stays "-1" and is refused as a label training never saw)
    frame[spec.label_field] = [names[i] if 0 <= i < len(names) else str(i) for i in frame[spec.label_field]]
    return frame, where, names


def _load_hub(spec: TaskSpec, split: str) -> Examples:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_GLUE, spec.name, split=split)
    except Exception as exc:  # noqa: BLE001 (datasets raises many types offline: ConnectionError, DatasetNotFoundError, ...)
        raise DataError(
            Problem(
                "task.name",
                f"cannot load GLUE {spec.name}/{split} from the hub ({type(exc).__name__}: {str(exc)[:160]})",
                "offline? set task.data_dir to a folder with the official GLUE TSVs",
            )
        ) from None
    return _frame_to_examples(ds.to_pandas(), spec, f"{HUB_GLUE}/{spec.name}/{split}")


# ---------------------------------------------------------------------------------------------------------
# Tokenisation and batches


@dataclass
class Encoded:
    """A tokenised split: variable-length token ids (no padding yet) and labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor
    pad_id: int
    pad_to: int | None = None  # pad every batch to this length (the paper's protocol); None: dynamic

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode(
    tokenizer, examples: Examples, max_length: int, regression: bool, pad_to_max: bool = False
) -> Encoded:
    """Tokenise every example once (truncated to ``max_length``; padded later, per batch)."""
    enc = tokenizer(*examples.texts, truncation=True, max_length=max_length, padding=False)
    types = enc.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    labels = torch.tensor(examples.labels, dtype=torch.float32 if regression else torch.long)
    return Encoded(
        enc["input_ids"], types, labels, tokenizer.pad_token_id, max_length if pad_to_max else None
    )


def encoded_split(tokenizer, cfg: TaskSection, spec: TaskSpec, split: str) -> Encoded:
    """A split of the configured task, read and tokenised with the task's settings (limits, length,
    padding)."""
    examples = load_examples(cfg, spec, split)
    return encode(tokenizer, examples, cfg.max_length, spec.is_regression, cfg.padding == "max_length")


def collate(data: Encoded, indices: list[int]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example (dynamic padding), or to ``data.pad_to``; right-padded."""
    longest = data.pad_to or max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), longest), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), longest), dtype=torch.long)
    types = (
        torch.zeros((len(indices), longest), dtype=torch.long) if data.token_type_ids is not None else None
    )
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": data.labels[indices]}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    lengths: list[int] | None = None,
    min_size: int = 1,
) -> list[list[int]]:
    """Global batches of example indices. With ``lengths``, examples of similar length are batched together
    (sorted within shuffled windows of 50 batches, then the batches shuffled) to cut padding. A final batch
    smaller than ``min_size`` is dropped: training passes world size x accumulation, so that no rank ever
    gets an empty share (it would leave the others waiting in the gradient all-reduce)."""
    order = list(range(n))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if lengths is not None:
        window = batch_size * 50
        order = [
            i for s in range(0, n, window) for i in sorted(order[s : s + window], key=lambda j: -lengths[j])
        ]
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if batches and len(batches[-1]) < min_size:
        batches.pop()
    if lengths is not None and shuffle:
        rng.shuffle(batches)
    return batches


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's share of a global batch (strided, so shares differ in size by at most one)."""
    return batch[rank::world]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
