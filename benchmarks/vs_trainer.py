"""actlora train against the usual stack: transformers' ``Trainer`` with peft LoRA, same model, same data,
same settings, interleaved in one run.

Ours is the product itself: ``run_train`` on a ``load_config``'d config (the given YAML plus overrides that
pin what must be equal). The usual stack is what a user would write: ``AutoModelForSequenceClassification`` +
``get_peft_model(LoraConfig(task_type=SEQ_CLS, ...))``, a ``datasets.Dataset`` tokenised with ``.map``,
``DataCollatorWithPadding`` and ``Trainer(TrainingArguments(...))``, every argument at its default unless
equality needs it (the results file lists those and why). Both read the same examples (the task's first N),
tokenised identically (checked token for token), and train on all layers with the same LoRA settings and the
task head trainable.

Throughput = training examples processed / wall seconds of the training loop, model loading and data
preparation excluded, epoch-end evaluation excluded (each stack's own account of it, subtracted: ours' summary
``eval_seconds``, the Trainer's logged ``eval_runtime``), the epoch-end checkpoint both make included. Ours'
loop is the span ``run_train`` reports as ``train_seconds``; the Trainer's runs from its ``on_train_begin`` to
its ``on_train_end`` callback. The figure with evaluation included is reported too. Nothing is patched: ours
is ``run_train`` as ``actlora train`` calls it, the Trainer is timed by a callback and its own log.

Rep r uses seed ``--seed + r`` for both stacks, so the accuracy difference is averaged over seeds, not read
off one draw; the variants alternate order (ABBA), after a small untimed warm-up of each.

    python benchmarks/vs_trainer.py            # 2000 examples, 2 epochs, 4 reps (~10 min on 2 cores)
    python benchmarks/vs_trainer.py --examples 256 --epochs 1 --reps 1 --out /tmp/vt   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import actlora_cli.train
from actlora_cli.config import Config, load_config
from actlora_cli.data import encoded_split, load_examples, task_spec
from actlora_cli.distributed import setup
from actlora_cli.modeling import locate, resolve_source, target_suffixes
from actlora_cli.timing import HostLoad

try:  # python -m benchmarks.vs_trainer; python benchmarks/vs_trainer.py puts benchmarks/ itself on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common

TARGET_RATIO = {"cpu": 1.15, "cuda": 1.3}
TARGET_ACCURACY_POINTS = 0.5
NOISY_OTHERS = (
    0.10  # share of the machine's CPU time other processes took during a run, above which it is noisy
)

# TrainingArguments set away from their defaults, and why (the rest stay at transformers' defaults)
TRAINER_SETTINGS_WHY = {
    "output_dir": "where the Trainer writes its checkpoints (a scratch folder per run)",
    "per_device_train_batch_size": "equality: train.batch_size (one device, no accumulation)",
    "per_device_eval_batch_size": "equality: train.eval_batch_size (evaluation is excluded from the "
    "throughput)",
    "num_train_epochs": "equality: train.epochs",
    "learning_rate": "equality: train.lr",
    "warmup_steps": "equality: train.warmup_ratio (a float below 1 is a ratio of the total steps in "
    "transformers 5)",
    "weight_decay": "equality: train.weight_decay (the default 0.0 is also transformers' default)",
    "max_grad_norm": "equality: train.max_grad_norm (the default 1.0 is also transformers' default)",
    "eval_strategy": "equality: actlora train evaluates the validation split at every epoch end ('epoch')",
    "save_strategy": "equality: actlora train checkpoints adapter, optimizer, scheduler and RNG at every "
    "epoch end ('epoch'; the Trainer's default is every 500 steps)",
    "seed": "equality: train.seed (the Trainer reseeds with it at construction)",
    "bf16 / fp16": "equality: set only when --precision is bf16 / fp16 (autocast, as train.precision does)",
}
TRAINER_DEFAULTS_KEPT = (
    "optim (adamw_torch_fused on torch >= 2.8, also on CPU), lr_scheduler_type linear, "
    "dataloader_num_workers 0, dataloader_pin_memory True, dataloader_drop_last False, group_by_length "
    "False, logging_steps 500, report_to none, torch_compile False, remove_unused_columns True, progress "
    "bar (tqdm) on"
)
DIFFERENCES = [
    (
        "Warm-up: actlora's step s < w runs at (s + 1) / (w + 1) of the peak with w = round(ratio x "
        "steps); the Trainer's at s / w with w = ceil(ratio x steps), so its first step has lr 0. Both "
        "decay linearly to 0 after w (the warm-up step counts of each run are in the results)."
    ),
    (
        "Optimizer: the Trainer's default AdamW is torch's fused kernel (on CPU too); actlora uses fused "
        "AdamW on CUDA and torch's default (foreach) on CPU. Same betas, eps and weight decay."
    ),
    (
        "Weight decay: the Trainer exempts biases and LayerNorm weights, actlora decays every trainable "
        "parameter; this matters only when train.weight_decay > 0 (default 0)."
    ),
    (
        "Data order and dropout draws differ (actlora shuffles with its own seeded batch plan, the Trainer "
        "with its sampler), so the two never see the same batch sequence: accuracies differ by run-to-run "
        "noise even with identical settings; the per-seed differences show how much."
    ),
    (
        "Logging: actlora writes one JSON line per step (flushed); the Trainer logs every 500 steps. Both "
        "show a progress bar. Both are in the timed loop, as a user gets them."
    ),
    (
        "Checkpoints: both save at each epoch end inside the timed loop (actlora: adapter + "
        "optimizer/scheduler/RNG state, and a copy of the adapter per epoch; the Trainer: adapter, "
        "optimizer, scheduler, RNG, trainer state and the tokenizer files)."
    ),
    (
        "peft wrapper: the Trainer path uses task_type=SEQ_CLS (PeftModelForSequenceClassification), "
        "actlora a plain PeftModel; same adapted modules and trainable parameters (checked)."
    ),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/minilm_movies_demo.yaml", help="base config (YAML)")
    p.add_argument("--examples", type=int, default=2000, help="training examples: the task's first N (2000)")
    p.add_argument(
        "--eval-examples", type=int, default=None, help="validation examples (default: the config's)"
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs (2)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's)")
    p.add_argument("--reps", type=int, default=4, help="timed runs of each stack, interleaved ABBA (4)")
    p.add_argument("--seed", type=int, default=0, help="seed of rep 0; rep r uses seed + r (0)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="both stacks (fp32)")
    p.add_argument(
        "--warmup-examples", type=int, default=64, help="examples of the untimed warm-up (0: none)"
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/actlora_vs_trainer"), help="scratch folder")
    common.add_output_args(p)
    return p.parse_args(argv)


def make_config(
    args: argparse.Namespace, run_dir: Path, seed: int, examples: int, eval_examples: int | None, epochs: int
) -> Config:
    """The base config with what must be equal pinned: every layer, plain LoRA, dynamic padding, no extras."""
    overrides = [
        "rank.k=all",
        "lora.method=lora",
        "task.padding=dynamic",
        "train.group_by_length=false",
        "train.grad_accum=1",
        "train.max_steps=null",
        "train.save_every=null",
        'train.prefix_cache="off"',
        f"task.max_train_examples={examples}",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        "model.dtype=float32",
        f"train.precision={args.precision}",
    ]
    if eval_examples is not None:
        overrides.append(f"task.max_eval_examples={eval_examples}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    return load_config(args.config, overrides, {"output_dir": str(run_dir)})


def tidy() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_ours(cfg: Config) -> dict[str, Any]:
    """``run_train`` as ``actlora train`` calls it; its summary accounts for the epoch-end evaluations."""
    load = HostLoad()
    summary, log = common.train(cfg)
    total = summary["steps"]
    return {
        "loop_s": summary["train_seconds"],
        "eval_s": summary["eval_seconds"],
        "evaluations": len(summary["history"]),
        "samples": sum(r["samples"] for r in log),
        "steps": total,
        "warmup_steps": round(cfg.train.warmup_ratio * total),
        "accuracy": summary["final_metrics"]["validation"]["accuracy"],
        "trainable_parameters": summary["trainable_parameters"],
        "others_cpu_share": load.others_share(),
    }


def run_trainer(cfg: Config, work: Path) -> dict[str, Any]:
    """The usual stack, as a user writes it, with the settings read from the same config."""
    import datasets
    import numpy as np
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    t, spec = cfg.train, task_spec(cfg.task)
    assert not spec.is_regression, "the comparison reports accuracy: use a classification task"
    set_seed(t.seed)
    source = resolve_source(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=spec.num_labels, dtype=torch.float32
    )
    # only to name the same modules actlora adapts (for MiniLM: query, value; classifier)
    arch = locate(model)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=[s.rsplit(".", 1)[-1] for s in target_suffixes(arch, cfg.lora.targets)],
        modules_to_save=list(arch.head_modules),
    )
    model = get_peft_model(model, lora)

    def dataset(split: str) -> datasets.Dataset:
        examples = load_examples(cfg.task, spec, split)  # the same examples actlora reads (the first N)
        columns = {f: examples.texts[i] for i, f in enumerate(spec.text_fields)}
        raw = datasets.Dataset.from_dict({**columns, "label": examples.labels})
        encoded = raw.map(
            lambda b: tokenizer(
                *[b[f] for f in spec.text_fields], truncation=True, max_length=cfg.task.max_length
            ),
            batched=True,
        )
        ours = encoded_split(tokenizer, cfg.task, spec, split)
        assert encoded["input_ids"] == ours.input_ids, f"{split}: tokenised differently from actlora"
        return encoded

    train_ds, eval_ds = dataset(cfg.task.train_split), dataset("validation")

    def accuracy(prediction) -> dict[str, float]:
        return {
            "accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())
        }

    class LoopClock(TrainerCallback):
        begin = end = 0.0

        def on_train_begin(self, *a, **k):
            common.sync()
            LoopClock.begin = time.perf_counter()

        def on_train_end(self, *a, **k):
            common.sync()
            LoopClock.end = time.perf_counter()

    training_args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm or 0.0,
        eval_strategy="epoch",
        save_strategy="epoch",
        seed=t.seed,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=[LoopClock()],
    )
    shutil.rmtree(work, ignore_errors=True)
    load = HostLoad()
    trainer.train()
    # each epoch-end evaluation logs its own runtime (the evaluation loop and the metrics)
    evals = [e for e in trainer.state.log_history if "eval_runtime" in e]
    total = trainer.state.global_step
    result = {
        "loop_s": LoopClock.end - LoopClock.begin,
        "eval_s": sum(e["eval_runtime"] for e in evals),
        "evaluations": len(evals),
        "samples": round(len(train_ds) * trainer.state.epoch),
        "steps": total,
        "warmup_steps": training_args.get_warmup_steps(total),
        "accuracy": evals[-1]["eval_accuracy"],
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "others_cpu_share": load.others_share(),
        "target_modules": sorted(lora.target_modules),
        # SEQ_CLS adds classifier and score itself
        "modules_to_save": sorted(set(lora.modules_to_save or [])),
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
    }
    del trainer, model
    return result


def finish(r: dict[str, Any]) -> dict[str, Any]:
    r["train_s"] = r["loop_s"] - r["eval_s"]
    r["samples_per_s"] = r["samples"] / r["train_s"]
    r["samples_per_s_with_eval"] = r["samples"] / r["loop_s"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}


def markdown(doc: dict[str, Any]) -> str:
    s, m = doc["settings"], doc["summary"]
    lines = common.markdown_header("actlora train vs transformers Trainer + peft", doc) + [
        (
            f"{s['model']} on `{s['task']}`: {s['train_examples']} training and {s['eval_examples']} "
            f"validation examples (max_length {s['max_length']}, dynamic padding), LoRA r={s['lora_r']} "
            f"alpha={s['lora_alpha']} dropout={s['lora_dropout']} on {', '.join(s['lora_targets'])} of all "
            f"layers + trainable head, batch {s['batch_size']}, {s['epochs']} epoch(s), lr {s['lr']}, "
            f"warm-up ratio {s['warmup_ratio']} then linear decay, weight decay {s['weight_decay']}, clip "
            f"{s['max_grad_norm']}, {s['precision']}."
        ),
        "",
        f"Throughput: {doc['definition']['samples_per_s']}",
        "",
        (
            "| rep | seed | order | ours samples/s | Trainer samples/s | ratio | ours acc | Trainer acc "
            "| diff (points) | others' CPU |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["reps"]:
        o, t = r["ours"], r["trainer"]
        others = max((x["others_cpu_share"] or 0) for x in (o, t))
        lines.append(
            f"| {r['rep']} | {r['seed']} | {' '.join(r['order'])} | {o['samples_per_s']:.2f} | "
            f"{t['samples_per_s']:.2f} | {r['ratio']:.3f} | {o['accuracy']:.4f} | {t['accuracy']:.4f} | "
            f"{r['accuracy_diff_points']:+.2f} | {others:.0%}{' (noisy)' if r['noisy'] else ''} |"
        )
    lines += [
        "",
        (
            f"Median samples/s: ours **{m['ours_samples_per_s_median']:.2f}**, Trainer "
            f"**{m['trainer_samples_per_s_median']:.2f}**; ratio of medians "
            f"**{m['ratio_of_medians']:.3f}** (median of per-pair ratios {m['median_pair_ratio']:.3f}; "
            f"target >= {m['target_ratio']}: {'met' if m['ratio_target_met'] else 'not met'})."
        ),
        (
            "With epoch-end evaluation in the wall time: ours "
            f"{m['ours_samples_per_s_with_eval_median']:.2f}, Trainer "
            f"{m['trainer_samples_per_s_with_eval_median']:.2f}, ratio "
            f"{m['ratio_of_medians_with_eval']:.3f}."
        ),
        (
            f"Final validation accuracy (mean over seeds): ours {m['ours_accuracy_mean']:.4f}, Trainer "
            f"{m['trainer_accuracy_mean']:.4f}; difference **{m['accuracy_diff_points_mean']:+.2f} points** "
            f"(target within {TARGET_ACCURACY_POINTS}: {'met' if m['accuracy_target_met'] else 'not met'})."
        ),
        (
            f"Steps per run: {m['steps']} (both); warm-up steps ours {m['warmup_steps']['ours']}, Trainer "
            f"{m['warmup_steps']['trainer']}; trainable parameters {m['trainable_parameters']:,} (both)."
        ),
        "",
        "## The Trainer side",
        "",
        "TrainingArguments set (everything else at transformers' defaults):",
        "",
    ]
    lines += [f"- `{k}`: {why}" for k, why in doc["trainer"]["settings_set"].items()]
    lines += [
        "",
        f"Defaults kept: {doc['trainer']['defaults_kept']}.",
        "",
        (
            f"Optimizer it built: {doc['trainer']['optimizer']}; LoRA targets "
            f"{doc['trainer']['target_modules']}, modules_to_save {doc['trainer']['modules_to_save']}."
        ),
        "",
        "## Where the stacks differ (possible biases)",
        "",
    ]
    lines += [f"- {d}" for d in doc["differences"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup().device
    work = args.work
    base = make_config(args, work / "probe", args.seed, args.examples, args.eval_examples, args.epochs)
    spec = task_spec(base.task)
    eval_examples = len(load_examples(base.task, spec, "validation"))

    if args.warmup_examples:
        cfg = make_config(
            args, work / "warmup_ours", args.seed, args.warmup_examples, args.warmup_examples, 1
        )
        run_ours(cfg)
        tidy()
        run_trainer(cfg, work / "warmup_trainer")
        tidy()
        print("warm-up done", flush=True)

    reps = []
    for rep in range(args.reps):
        seed = args.seed + rep
        order = ["ours", "trainer"] if rep % 2 == 0 else ["trainer", "ours"]
        row: dict[str, Any] = {"rep": rep, "seed": seed, "order": order}
        for variant in order:
            cfg = make_config(args, work / f"ours{rep}", seed, args.examples, args.eval_examples, args.epochs)
            row[variant] = finish(
                run_ours(cfg) if variant == "ours" else run_trainer(cfg, work / f"trainer{rep}")
            )
            tidy()
            r = row[variant]
            print(
                f"rep {rep} {variant:>7}: {r['samples_per_s']:.2f} samples/s ({r['samples']} in "
                f"{r['train_s']:.1f} s + {r['eval_s']:.1f} s eval), accuracy {r['accuracy']:.4f}",
                flush=True,
            )
        o, t = row["ours"], row["trainer"]
        assert o["steps"] == t["steps"] and o["samples"] == t["samples"], "the stacks ran different schedules"
        assert o["trainable_parameters"] == t["trainable_parameters"], "the stacks train different parameters"
        row["ratio"] = round(o["samples_per_s"] / t["samples_per_s"], 4)
        row["ratio_with_eval"] = round(o["samples_per_s_with_eval"] / t["samples_per_s_with_eval"], 4)
        row["accuracy_diff_points"] = round(100 * (o["accuracy"] - t["accuracy"]), 3)
        row["noisy"] = any((x["others_cpu_share"] or 0) > NOISY_OTHERS for x in (o, t))
        reps.append(row)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[variant][key] for r in reps)

    first = reps[0]
    target = TARGET_RATIO["cuda" if device.type == "cuda" else "cpu"]
    ratio = med("ours", "samples_per_s") / med("trainer", "samples_per_s")
    diff = statistics.mean(r["accuracy_diff_points"] for r in reps)
    summary = {
        "ours_samples_per_s_median": round(med("ours", "samples_per_s"), 3),
        "trainer_samples_per_s_median": round(med("trainer", "samples_per_s"), 3),
        "ratio_of_medians": round(ratio, 4),
        "median_pair_ratio": round(statistics.median(r["ratio"] for r in reps), 4),
        "pair_ratios": [r["ratio"] for r in reps],
        "ours_samples_per_s_with_eval_median": round(med("ours", "samples_per_s_with_eval"), 3),
        "trainer_samples_per_s_with_eval_median": round(med("trainer", "samples_per_s_with_eval"), 3),
        "ratio_of_medians_with_eval": round(
            med("ours", "samples_per_s_with_eval") / med("trainer", "samples_per_s_with_eval"), 4
        ),
        "target_ratio": target,
        "ratio_target_met": ratio >= target,
        "ours_accuracy_mean": round(statistics.mean(r["ours"]["accuracy"] for r in reps), 4),
        "trainer_accuracy_mean": round(statistics.mean(r["trainer"]["accuracy"] for r in reps), 4),
        "accuracy_diff_points_mean": round(diff, 3),
        "accuracy_diff_points_per_seed": [r["accuracy_diff_points"] for r in reps],
        "accuracy_target_met": abs(diff) <= TARGET_ACCURACY_POINTS,
        "steps": first["ours"]["steps"],
        "warmup_steps": {"ours": first["ours"]["warmup_steps"], "trainer": first["trainer"]["warmup_steps"]},
        "trainable_parameters": first["ours"]["trainable_parameters"],
        "noisy_reps": [r["rep"] for r in reps if r["noisy"]],
    }
    t = base.train
    doc = common.header(
        "vs_trainer",
        device,
        args.machine,
        code=(actlora_cli.train,),
        extra_versions=("accelerate", "datasets"),
    )
    doc |= {
        "settings": {
            "config": args.config,
            "model": base.model.name,
            "task": spec.name,
            "train_examples": args.examples,
            "eval_examples": eval_examples,
            "max_length": base.task.max_length,
            "padding": "dynamic (actlora collate / DataCollatorWithPadding)",
            "layers": "all",
            "lora_r": base.lora.r,
            "lora_alpha": base.lora.alpha,
            "lora_dropout": base.lora.dropout,
            "lora_targets": base.lora.targets,
            "batch_size": t.batch_size,
            "eval_batch_size": t.eval_batch_size,
            "epochs": args.epochs,
            "lr": t.lr,
            "warmup_ratio": t.warmup_ratio,
            "weight_decay": t.weight_decay,
            "max_grad_norm": t.max_grad_norm,
            "precision": args.precision,
            "reps": args.reps,
            "seeds": [r["seed"] for r in reps],
            "order": "untimed warm-up of each, then ABBA",
            "warmup_examples": args.warmup_examples,
        },
        "definition": {
            "samples_per_s": "training examples processed / wall seconds of the training loop, model loading "
            "and data preparation excluded, epoch-end evaluation excluded (each stack's own account, "
            "subtracted: actlora's summary eval_seconds, the Trainer's logged eval_runtime), epoch-end "
            "checkpointing included. Loop: actlora's reported train_seconds; the Trainer's on_train_begin "
            "to on_train_end.",
            "samples_per_s_with_eval": "the same with epoch-end evaluation left in",
            "accuracy": "validation accuracy after the last epoch, each stack's own epoch-end evaluation",
            "others_cpu_share": "share of the machine's CPU capacity other processes took during the run "
            "(/proc)",
        },
        "trainer": {
            "settings_set": TRAINER_SETTINGS_WHY,
            "defaults_kept": TRAINER_DEFAULTS_KEPT,
            "optimizer": first["trainer"]["optimizer"] + f" (optim={first['trainer']['optim']})",
            "target_modules": first["trainer"]["target_modules"],
            "modules_to_save": first["trainer"]["modules_to_save"],
        },
        "differences": DIFFERENCES,
        "reps": reps,
        "summary": summary,
    }
    common.write_result(args.out, doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
