"""The frozen-prefix cache against the uncached run: 3-epoch training time of the real loop with a top-heavy
plan (MiniLM, layers 3-5: the embeddings and layers 0-2 are the frozen prefix), the variants interleaved in
one run.

Variants:
  uncached   the default run (prefix dropout on, as the paper trains);
  no-dropout the uncached run with the prefix's dropout off: the run the cache reproduces exactly;
  cached     train.prefix_cache=memory (prefix dropout off, fp32 store on CPU).

Each variant is a ``run_train`` run. Reported: the sum of the timed steps over the 3 epochs (model work only,
from train_log.jsonl), the loop's wall time without its epoch-end evaluations (the summary's
``train_seconds - eval_seconds``: checkpoints and collation stay in), each as a ratio to `uncached`; the
evaluations' seconds; the epoch-1 and later-epoch step times; final validation accuracy; the cache's size.

    python -m benchmarks.prefix_cache --examples 960 --reps 2
    python -m benchmarks.prefix_cache --examples 64 --eval-examples 32 --epochs 2 --reps 1 --out /tmp/pc
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import actlora_cli.prefix_cache
import actlora_cli.train
from actlora_cli.config import CLEAR, load_config
from actlora_cli.distributed import setup

try:  # python -m benchmarks.prefix_cache; python benchmarks/prefix_cache.py puts benchmarks/ on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common

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
        {
            "output_dir": str(folder),
            "rank.layers": list(range(args.lowest, 6)),
            "rank.k": CLEAR,
            "rank.tau": CLEAR,
        },
    )
    summary, steps = common.train(cfg)
    per_epoch = len(steps) // args.epochs
    step_ms = [common.step_ms(s) for s in steps]
    return {
        "steps_s": sum(step_ms) / 1000,
        "loop_s": summary["train_seconds"] - summary["eval_seconds"],
        "eval_s": summary["eval_seconds"],
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
    common.add_output_args(parser)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for variant in common.interleaved(VARIANTS, rep):
            r = run(variant, args, Path(args.work) / f"{variant}{rep}")
            results[variant].append(r)
            print(
                f"rep {rep} {variant}: steps {r['steps_s']:.1f} s, loop {r['loop_s']:.1f} s + eval "
                f"{r['eval_s']:.1f} s, later step {r['later_step_ms']:.0f} ms, acc {r['accuracy']:.4f}",
                flush=True,
            )
    med = {
        v: {
            k: statistics.median(r[k] for r in rs)
            for k in (
                "steps_s",
                "loop_s",
                "eval_s",
                "epoch1_step_ms",
                "later_step_ms",
                "later_forward_ms",
                "accuracy",
            )
        }
        for v, rs in results.items()
    }
    base = med["uncached"]
    ratios = {
        v: {"steps": round(m["steps_s"] / base["steps_s"], 4), "loop": round(m["loop_s"] / base["loop_s"], 4)}
        for v, m in med.items()
    }
    code = (actlora_cli.train, actlora_cli.prefix_cache)
    doc = common.header("prefix_cache", setup().device, args.machine, code=code)
    doc |= {
        "settings": {"config": args.config, "examples": args.examples, "eval_examples": args.eval_examples,
                     "epochs": args.epochs, "batch_size": args.batch_size, "reps": args.reps},
        "plan": list(range(args.lowest, 6)),
        "median": med,
        "ratio_to_uncached": ratios,
        "runs": results,
        "cache": results["cached"][0]["frozen_prefix"].get("cache"),
    }  # fmt: skip
    title = f"Frozen-prefix cache, {args.epochs} epochs, plan {doc['plan']}"
    lines = common.markdown_header(title, doc) + [
        "| variant | timed steps, s (ratio) | loop wall without eval, s (ratio) | eval s | epoch-1 step ms "
        "| later step ms | later forward ms | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, m in med.items():
        lines.append(
            f"| {v} | {m['steps_s']:.1f} ({ratios[v]['steps']:.3f}) | {m['loop_s']:.1f} "
            f"({ratios[v]['loop']:.3f}) | {m['eval_s']:.1f} | {m['epoch1_step_ms']:.0f} "
            f"| {m['later_step_ms']:.0f} | {m['later_forward_ms']:.0f} | {m['accuracy']:.4f} |"
        )
    lines += ["", f"cache: {doc['cache']}"]
    common.write_result(args.out, doc, "\n".join(lines))


if __name__ == "__main__":
    main()
