"""Training step time of LoRA plans, side by side in one run, and the floor of a plan.

The step is the product's own: each plan (e.g. every layer, and the top-heavy 3-5 of MiniLM) is trained by
``run_train``, in short runs of ``--warmup-steps + --batches`` optimizer steps (one epoch of the task's first
that many batches, so every run sees the same batches in the same order), with everything the config says:
autocast (``train.precision``), clipping, AdamW, the scheduler. A step's time is forward + backward +
optimizer from train_log.jsonl (the loop's own phase timer: CUDA events on GPU, a synchronous clock on CPU;
collation is outside it); the first ``--warmup-steps`` of each run are dropped. The plans' runs are
interleaved (A B, B A, ...) over ``--reps`` rounds, so machine noise hits them alike; the report gives medians
and ratios.

The floor of a plan is what a step cannot go below: a forward pass of the frozen model (no grad) plus the
backward pass over the adapted span alone. The span's backward is the runs' own backward phase: nothing below
the lowest adapted layer requires grad, so autograd's graph holds only the span. The frozen forward is not a
training step, so it is timed here, once per round beside the runs: the base model in train mode (the same
dropout work) under the run's autocast, without grad, on the same batches collated as ``run_train`` collates
them.

    python benchmarks/step_time.py --plans all 3-5 --reps 5 --batches 12
    python benchmarks/step_time.py --batches 2 --warmup-steps 1 --reps 1 --out /tmp/st   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import actlora_cli.train
from actlora_cli.data import batch_indices, collate, encoded_split, task_spec, to_device
from actlora_cli.distributed import setup
from actlora_cli.modeling import Loaded, autocast_context, autocast_settings, load_for

try:  # python -m benchmarks.step_time; python benchmarks/step_time.py puts benchmarks/ itself on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common


def parse_plan(text: str, num_layers: int) -> list[int]:
    if text == "all":
        return list(range(num_layers))
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


@torch.no_grad()
def time_frozen_forward(loaded: Loaded, cfg, skip: int) -> list[float]:
    """Milliseconds of a no-grad forward of the frozen model over the batches a run of ``cfg`` trains on
    (its first epoch's batch plan), the first ``skip`` batches left out as the runs' warm-up steps are."""
    t, device = cfg.train, loaded.device
    data = encoded_split(loaded.tokenizer, cfg.task, task_spec(cfg.task), cfg.task.train_split)
    plan = batch_indices(
        len(data), t.batch_size, shuffle=True, seed=t.seed,
        lengths=data.lengths if t.group_by_length else None,
    )[: t.max_steps]  # fmt: skip
    autocast = autocast_context(autocast_settings(t.precision, device)[0], device)
    model, out = loaded.model, []
    model.train()  # the same dropout work as a training forward
    for i, indices in enumerate(plan):
        batch = to_device(collate(data, indices), device)
        batch.pop("labels")
        common.sync(device)
        start = time.perf_counter()
        with autocast():
            model(**batch)
        common.sync(device)
        if i >= skip:
            out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies.yaml")
    parser.add_argument("--plans", nargs="+", default=["all", "3-5"], help="'all', 'lo-hi' or 'a,b,c'")
    parser.add_argument("--batches", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps of each run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=32, help="for each run's epoch-end evaluation")
    parser.add_argument("--reps", type=int, default=5, help="rounds: one run of each plan per round")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/actlora_step_time_bench"))
    common.add_output_args(parser)
    args = parser.parse_args()

    def config(layers: list[int], folder: Path):
        return common.plan_run_config(
            args.config, args.set, layers, folder, steps=args.warmup_steps + args.batches,
            batch_size=args.batch_size, eval_examples=args.eval_examples,
        )  # fmt: skip

    base = config([0], args.work / "frozen")
    loaded = load_for(base.model, task_spec(base.task).num_labels, setup().device)
    variants: dict[str, dict[str, Any]] = {
        text: {"layers": parse_plan(text, loaded.arch.num_layers), "steps": [], "runs": []}
        for text in args.plans
    }
    frozen: list[float] = []
    for rep in range(args.reps):
        frozen += time_frozen_forward(loaded, base, args.warmup_steps)
        for text in common.interleaved(args.plans, rep):
            v = variants[text]
            cfg = config(v["layers"], args.work / f"{text.replace(',', '_')}-{rep}")
            summary, log = common.train(cfg)
            timed = log[args.warmup_steps :]
            v["trainable"], precision = summary["trainable_parameters"], summary["precision"]
            v["steps"] += timed
            v["runs"].append(
                {"rep": rep, "train_seconds": summary["train_seconds"], "timed_steps": len(timed)}
            )
            print(
                f"rep {rep} {text}: {statistics.median(map(common.step_ms, timed)):.1f} ms/step", flush=True
            )

    frozen_ms = statistics.median(frozen)
    baseline = args.plans[0]
    base_ms = statistics.median(map(common.step_ms, variants[baseline]["steps"]))
    rows = []
    for text, v in variants.items():
        steps = [common.step_ms(s) for s in v["steps"]]
        step_ms = statistics.median(steps)
        span_ms = statistics.median(s["backward_ms"] for s in v["steps"])
        floor_ms = frozen_ms + span_ms
        rows.append(
            {
                "plan": text,
                "layers": v["layers"],
                "trainable_parameters": v["trainable"],
                "step_ms_median": round(step_ms, 2),
                "step_ms_min": round(min(steps), 2),
                "forward_ms_median": round(statistics.median(s["forward_ms"] for s in v["steps"]), 2),
                "optimizer_ms_median": round(statistics.median(s["optimizer_ms"] for s in v["steps"]), 2),
                "ratio_to_" + baseline: round(step_ms / base_ms, 4),
                "frozen_forward_ms": round(frozen_ms, 2),
                "span_backward_ms": round(span_ms, 2),
                "floor_ms": round(floor_ms, 2),
                "step_over_floor": round(step_ms / floor_ms, 4),
                "runs": v["runs"],
            }
        )
    doc = common.header("step_time", loaded.device, args.machine, code=(actlora_cli.train,))
    doc |= {
        "model": base.model.name,
        "settings": {"config": args.config, "set": args.set, "batch_size": args.batch_size,
                     "timed_steps_per_run": args.batches, "warmup_steps": args.warmup_steps,
                     "reps": args.reps, "precision": precision},
        "rows": rows,
    }  # fmt: skip
    lines = common.markdown_header("Step time by plan", doc) + [
        f"{args.batches} timed steps of batch {args.batch_size} per run (after {args.warmup_steps} untimed), "
        f"{args.reps} interleaved runs per plan: `run_train`'s own steps, {precision}.",
        "",
        f"| plan | layers | trainable | step ms (median) | ratio to {baseline} | frozen fwd ms | span bwd ms "
        "| floor ms | step / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['plan']} | {r['layers']} | {r['trainable_parameters']:,} | {r['step_ms_median']} "
            f"| {r['ratio_to_' + baseline]} | {r['frozen_forward_ms']} | {r['span_backward_ms']} "
            f"| {r['floor_ms']} | {r['step_over_floor']} |"
        )
    common.write_result(args.out, doc, "\n".join(lines))


if __name__ == "__main__":
    main()
