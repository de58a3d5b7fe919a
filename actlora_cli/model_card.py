"""What makes a finished adapter folder self-contained: the tokenizer, the task's labels (``actlora.json``:
num_labels, id2label, problem_type, the plan, the base model), a base-model reference that works on another
machine, and a model card (README.md) that states the plan, the scores, the method, the metrics, the command
that made it and the lines that load it."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from . import artifacts
from .modeling import PACKAGED_PREFIX
from .packaged import PACKAGED_MODELS


def base_note(name: str) -> str:
    """How a packaged model's weights differ from its hub id's ("" where they are the same)."""
    entry = PACKAGED_MODELS.get(name[len(PACKAGED_PREFIX) :]) if name.startswith(PACKAGED_PREFIX) else None
    return f" ({entry.note})" if entry and entry.note else ""


def portable_base(name: str) -> str:
    """A packaged model's hub id: a reference another machine resolves (the packaged path is one venv's)."""
    if name.startswith(PACKAGED_PREFIX):
        entry = PACKAGED_MODELS.get(name[len(PACKAGED_PREFIX) :])
        return entry.hub_id if entry else name
    return name


def label_record(num_labels: int, label_names: tuple[str, ...] | None) -> dict[str, Any]:
    """actlora.json's labels: what transformers' config takes to build the head and name its outputs."""
    names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(max(num_labels, 1))]
    classes = num_labels > 1
    return {
        "num_labels": num_labels,
        "problem_type": "single_label_classification" if classes else "regression",
        "id2label": {str(i): n for i, n in enumerate(names)} if classes else None,
        "label2id": {n: i for i, n in enumerate(names)} if classes else None,
    }


def complete(
    folder: Path,
    *,
    tokenizer,
    model_name: str,
    method: str,
    task: str,
    labels: dict[str, Any],
    plan: dict[str, Any],
    metrics: dict[str, dict[str, float]],
    trainable: int,
) -> None:
    """Write the tokenizer, actlora.json and README.md into a saved peft adapter folder, and point its
    adapter_config.json at a portable base."""
    tokenizer.save_pretrained(folder)
    config_path = folder / "adapter_config.json"
    base = portable_base(model_name)
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base
        artifacts.atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    record = {"base_model": base, "model_name": model_name, "task": task, "method": method, **labels,
              "plan": plan}  # fmt: skip
    artifacts.atomic_write_text(folder / "actlora.json", json.dumps(record, indent=2) + "\n")
    artifacts.atomic_write_text(folder / "README.md", card(record, metrics, trainable))


def card(record: dict[str, Any], metrics: dict[str, dict[str, float]], trainable: int) -> str:
    plan = record["plan"]
    shown = ", ".join(f"{split} {k} {v:.4f}" for split, m in metrics.items() for k, v in m.items()) or "none"
    # ignore_mismatched_sizes: a base whose checkpoint has a head of another size (the saved head replaces it)
    load_args = f"num_labels={record['num_labels']}, ignore_mismatched_sizes=True"
    if record["problem_type"] == "regression":
        load_args += ', problem_type="regression"'
    elif record.get("label2id") and list(record["label2id"]) != [f"LABEL_{i}" for i in record["id2label"]]:
        # the names the task gave its classes (transformers would call them LABEL_0, LABEL_1, ...)
        id2label = {int(i): n for i, n in record["id2label"].items()}
        load_args += f", id2label={id2label!r}, label2id={record['label2id']!r}"
    command = " ".join(shlex.quote(a) for a in ["actlora", *sys.argv[1:]]) if sys.argv else "actlora"
    ranking = plan.get("ranking")
    note = base_note(record["model_name"])
    return f"""---
library_name: peft
base_model: {record["base_model"]}
tags: [actlora, lora, {record["method"]}, text-classification]
---

# {record["method"]} adapter for {record["task"]}, layers {plan["layers"]}

Made by [actlora](https://pypi.org/project/actlora/) (activation-guided layer selection for LoRA).

- base model: `{record["base_model"]}` (configured as `{record["model_name"]}`){note}
- task: {record["task"]}; labels: {record["id2label"] or "one regression output"}
- method: {record["method"]}; trainable parameters: {trainable:,}
- layer plan: {plan["layers"]} (rule {plan.get("rule")}, strategy {plan.get("strategy")})
- plan from: {plan.get("source")}
- layers by score, best first: {ranking if ranking is not None else "none (a plan by position or by name)"}
- final metrics: {shown}
- made with: `{command}`

## Load it

```python
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer

model = AutoPeftModelForSequenceClassification.from_pretrained("<this folder>", {load_args})
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

The label count and names are in `actlora.json` (transformers builds the base with two labels unless told;
`id2label` and `label2id` there are what `from_pretrained` takes to name the outputs on `model.config`).
"""
