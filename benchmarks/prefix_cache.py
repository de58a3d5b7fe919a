"""The frozen-prefix cache against the uncached run: 3-epoch training time of the real loop with a top-heavy plan
(MiniLM, layers 3-5: the embeddings and layers 0-2 are the frozen prefix), the variants interleaved in one run.

Variants:
  uncached   the default run (prefix dropout on, as the paper trains);
  no-dropout the uncached run with the prefix's dropout off: the run the cache reproduces exactly;
  cached     train.prefix_cache=memory (prefix dropout off, fp32 store on CPU).

Reported: the sum of the timed steps over the 3 epochs (model work only), the loop's wall time (with the
epoch-end evaluations, identical in all variants), each as a ratio to `uncached`; the epoch-1 and later-epoch
step times; final validation accuracy; the cache's size.

    python -m benchmarks.prefix_cache --examples 960 --reps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from actlora_cli.config import CLEAR, load_config
from actlora_cli.train import run_train

VARIANTS = {
    "uncached": [],
    "no-dropout": ["train.frozen_dropout=false"],
    "cached": ["train.prefix_cache=memory"],
}


def run(variant: str, args, folder: Path) -> dict:
    cfg = load_config(
        args.config,
        [
            *VARIANTS[variant],
            f"task.max_train_examples={args.examples}",
            f"task.max_eval_examples={args.eval_examples}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
        ],
        {"output_dir": str(folder), "rank.k": CLEAR, "rank.layers": list(range(args.lowest, 6))},
    )
    summary = run_train(cfg)
    steps = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    per_epoch = len(steps) // args.epochs
    step_ms = [s["forward_ms"] + s["backward_ms"] + s["optimizer_ms"] for s in steps]
    return {
        "steps_s": sum(step_ms) / 1000,
        "wall_s": summary["train_seconds"],
        "epoch1_step_ms": statistics.median(step_ms[:per_epoch]),
        "later_step_ms": statistics.median(step_ms[per_epoch:]),
        "later_forward_ms": statistics.median([s["forward_ms"] for s in steps[per_epoch:]]),
        "accuracy": summary["final_metrics"]["validation"]["accuracy"],
        "frozen_prefix": summary["frozen_prefix"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies_demo.yaml")
    parser.add_argument("--examples", type=int, default=960)
    parser.add_argument("--eval-examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lowest", type=int, default=3, help="plan = layers lowest..5")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--work", default="/tmp/actlora_prefix_bench")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            r = run(variant, args, Path(args.work) / f"{variant}{rep}")
            results[variant].append(r)
            print(
                f"rep {rep} {variant}: steps {r['steps_s']:.1f} s, wall {r['wall_s']:.1f} s, "
                f"later step {r['later_step_ms']:.0f} ms, acc {r['accuracy']:.4f}",
                flush=True,
            )
    med = {
        v: {
            k: statistics.median(r[k] for r in rs)
            for k in ("steps_s", "wall_s", "epoch1_step_ms", "later_step_ms", "later_forward_ms", "accuracy")
        }
        for v, rs in results.items()
    }
    base = med["uncached"]
    ratios = {
        v: {"steps": round(m["steps_s"] / base["steps_s"], 4), "wall": round(m["wall_s"] / base["wall_s"], 4)}
        for v, m in med.items()
    }
    try:
        from benchmarks.step_time import machine_name
    except ImportError:  # run as `python benchmarks/padding.py`: the folder itself is on the path
        from step_time import machine_name

    tag = (
        f"cpu-{torch.get_num_threads()}core"
        if not torch.cuda.is_available()
        else "gpu-" + torch.cuda.get_device_name()
    )
    result = {
        "machine": {"cpu": machine_name(), "threads": torch.get_num_threads(), "label": tag},
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.prefix_cache "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "plan": list(range(args.lowest, 6)),
        "median": med,
        "ratio_to_uncached": ratios,
        "runs": results,
        "cache": results["cached"][0]["frozen_prefix"].get("cache"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"prefix_cache_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        (
            f"# Frozen-prefix cache, {args.epochs} epochs, plan {result['plan']} ({result['machine']['cpu']}, "
            f"{result['date']})"
        ),
        "",
        f"`{result['command']}`",
        "",
        (
            "| variant | timed steps, s (ratio) | loop wall, s (ratio) | epoch-1 step ms | later step ms "
            "| later forward ms | accuracy |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for v, m in med.items():
        lines.append(
            f"| {v} | {m['steps_s']:.1f} ({ratios[v]['steps']:.3f}) | {m['wall_s']:.1f} "
            f"({ratios[v]['wall']:.3f}) | {m['epoch1_step_ms']:.0f} | {m['later_step_ms']:.0f} "
            f"| {m['later_forward_ms']:.0f} | {m['accuracy']:.4f} |"
        )
    lines += ["", f"cache: {result['cache']}", ""]
    text = "\n".join(lines)
    (out / f"prefix_cache_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
