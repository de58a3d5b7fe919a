"""The paper's protocol (every example padded to 128 tokens) against dynamic padding (each batch padded to
its longest example), plain and with length-grouped batches: one epoch of the real training loop
(``run_train``), same plan (every layer), same examples, the variants interleaved in one run.

Measured: the epoch's time of training steps, the sum over train_log.jsonl of forward + backward + optimizer
(model work only: collation, evaluation and the checkpoint are out); the loop's wall time without its
epoch-end evaluation (the summary's ``train_seconds - eval_seconds``) is in the JSON file too.

    python benchmarks/padding.py --examples 640 --reps 3
    python benchmarks/padding.py --examples 64 --reps 1 --out /tmp/pad   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import actlora_cli.data
import actlora_cli.train
from actlora_cli.config import load_config
from actlora_cli.distributed import setup

try:  # python -m benchmarks.padding; python benchmarks/padding.py puts benchmarks/ itself on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common

VARIANTS = {"max_length": ("max_length", False), "dynamic": ("dynamic", False), "grouped": ("dynamic", True)}


def epoch(variant: str, args, run: Path) -> dict[str, Any]:
    padding, grouped = VARIANTS[variant]
    cfg = load_config(
        args.config,
        [
            f"task.padding={padding}",
            f"train.group_by_length={grouped}",
            f"task.max_train_examples={args.examples}",
            f"task.max_eval_examples={args.batch_size}",
            "train.epochs=1",
            f"train.batch_size={args.batch_size}",
            "rank.k=all",
        ],
        {"output_dir": str(run)},
    )
    summary, log = common.train(cfg)
    return {
        "steps_s": sum(map(common.step_ms, log)) / 1000,
        "loop_s_without_eval": summary["train_seconds"] - summary["eval_seconds"],
        "accuracy": summary["final_metrics"]["validation"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies.yaml")
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", default="/tmp/actlora_padding_bench")
    common.add_output_args(parser)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for variant in common.interleaved(VARIANTS, rep):
            r = epoch(variant, args, Path(args.work) / f"{variant}{rep}")
            runs[variant].append(r)
            print(f"rep {rep} {variant}: {r['steps_s']:.2f} s of training steps", flush=True)
    med = {v: statistics.median(r["steps_s"] for r in rs) for v, rs in runs.items()}
    dyn, pad, grp = med["dynamic"], med["max_length"], med["grouped"]
    doc = common.header("padding", setup().device, args.machine, code=(actlora_cli.train, actlora_cli.data))
    doc |= {
        "settings": {"config": args.config, "examples": args.examples, "batch_size": args.batch_size,
                     "reps": args.reps, "plan": "all layers", "epochs": 1},
        "seconds": {v: [r["steps_s"] for r in rs] for v, rs in runs.items()},
        "runs": runs,
        "median_s": {v: round(m, 3) for v, m in med.items()},
        "ratio_dynamic_to_max_length": round(dyn / pad, 4),
        "ratio_grouped_to_max_length": round(grp / pad, 4),
    }  # fmt: skip
    lines = common.markdown_header("Dynamic padding vs padding to 128", doc) + [
        "| padding | epoch time of training steps (median s) |",
        "|---|---|",
        f"| max_length (128) | {pad:.2f} |",
        f"| dynamic | {dyn:.2f} |",
        f"| dynamic, length-grouped | {grp:.2f} |",
        "",
        f"ratio dynamic / max_length: **{dyn / pad:.3f}**; length-grouped / max_length: **{grp / pad:.3f}** "
        "(target <= 0.3)",
    ]
    common.write_result(args.out, doc, "\n".join(lines))


if __name__ == "__main__":
    main()
