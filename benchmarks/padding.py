"""The paper's protocol (every example padded to 128 tokens) against dynamic padding (each batch padded to
its longest example), plain and with length-grouped batches: epoch time of the real training loop (the sum
of its timed steps), same plan, same examples, the variants interleaved in one run.

    python benchmarks/padding.py --examples 640 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from actlora_cli.config import load_config
from actlora_cli.train import run_train

VARIANTS = {"max_length": ("max_length", False), "dynamic": ("dynamic", False), "grouped": ("dynamic", True)}


def epoch_seconds(variant: str, args, run: Path) -> tuple[float, float]:
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
    summary = run_train(cfg)
    step_ms = sum(summary["mean_step_ms"].values())
    return step_ms * summary["steps"] / 1000, summary["final_metrics"]["validation"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies.yaml")
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", default="/tmp/actlora_padding_bench")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            seconds, _ = epoch_seconds(variant, args, Path(args.work) / f"{variant}{rep}")
            times[variant].append(seconds)
            print(f"rep {rep} {variant}: {seconds:.2f} s of training steps")
    med = {v: statistics.median(t) for v, t in times.items()}
    dyn, pad, grp = med["dynamic"], med["max_length"], med["grouped"]
    try:
        from benchmarks.step_time import machine_name
    except ImportError:  # run as `python benchmarks/padding.py`: the folder itself is on the path
        from step_time import machine_name

    result = {
        "machine": {"cpu": machine_name(), "threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/padding.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "examples": args.examples,
        "batch_size": args.batch_size,
        "plan": "all layers",
        "seconds": times,
        "median_s": {v: round(m, 3) for v, m in med.items()},
        "ratio_dynamic_to_max_length": round(dyn / pad, 4),
        "ratio_grouped_to_max_length": round(grp / pad, 4),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"cpu-{torch.get_num_threads()}core"
    (out / f"padding_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = (
        f"# Dynamic padding vs padding to 128 ({result['machine']['cpu']}, {result['date']})\n\n"
        f"`{result['command']}`\n\n| padding | epoch time of training steps (median s) |\n|---|---|\n"
        f"| max_length (128) | {pad:.2f} |\n| dynamic | {dyn:.2f} |\n| dynamic, length-grouped | {grp:.2f} |\n\n"
        f"ratio dynamic / max_length: **{dyn / pad:.3f}**; length-grouped / max_length: **{grp / pad:.3f}** "
        f"(target <= 0.3)\n"
    )
    (out / f"padding_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
