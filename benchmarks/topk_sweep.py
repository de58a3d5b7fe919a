"""Step time and memory by phase for k = 1..L (the shape of the Act-LoRA paper's Table 7): LoRA on the top-k
layers of the activation-norm ranking, one training step split into forward, backward and optimizer.

The ranking is the probe stage's own (``run_probe`` with the configured scorer and site, ``--probe-steps``
batches). Each k is then trained by ``run_train`` itself, in short runs of ``--warmup-steps + --batches``
optimizer steps (one epoch of the task's first that many batches: every k sees the same batches in the same
order), so the step is the product's, with the config's autocast, clipping, optimizer and scheduler. The
phase times are the loop's own (train_log.jsonl: CUDA events on GPU, a synchronous clock on CPU); the first
``--warmup-steps`` of each run are dropped; one run per k per round, the order reversed every round, medians
over all rounds reported.

Memory: on CUDA, the loop's own readings per step (allocated memory after the forward, the backward's peak and
after the step; the maximum over the timed steps), as Table 7. On CPU there is no allocator to ask, so the two
quantities that grow with k are measured directly: the bytes autograd saves for the backward (activations kept
by the forward, each storage once), from ``saved_tensors_hooks`` put around a one-step ``run_train`` of each k
(a first, untimed run: the hooks only record, the step is unchanged), and the trainable state (weights,
gradients and AdamW's two moments: 16 bytes per fp32 parameter).

    python -m benchmarks.topk_sweep --reps 3 --batches 8
    python -m benchmarks.topk_sweep --probe-steps 4 --batches 1 --warmup-steps 1 --reps 1 --out /tmp/tk
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

import actlora_cli.train
from actlora_cli.config import load_config
from actlora_cli.data import task_spec
from actlora_cli.distributed import setup
from actlora_cli.modeling import load_for
from actlora_cli.probe import run_probe
from actlora_cli.selection import select

try:  # python -m benchmarks.topk_sweep; python benchmarks/topk_sweep.py puts benchmarks/ itself on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common

PHASES = ("forward", "backward", "optimizer")
CUDA_MEMORY = ("mem_after_forward_mib", "mem_peak_backward_mib", "mem_after_step_mib")


def saved_for_backward_bytes(cfg) -> int:
    """Bytes autograd keeps for the backward of one training step of ``cfg`` (a one-step run): every tensor
    the forward saves, each storage once."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    # evaluation runs under inference_mode and saves nothing, so what is recorded is the one step's forward
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        common.train(cfg)
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies.yaml")
    parser.add_argument("--probe-steps", type=int, default=50)
    parser.add_argument("--batches", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps of each run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=32, help="for each run's epoch-end evaluation")
    parser.add_argument("--reps", type=int, default=3, help="rounds: one run of each k per round")
    parser.add_argument(
        "--set", action="append", default=[], help="config override key=value (e.g. model.random_init=true)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/actlora_topk_bench"))
    common.add_output_args(parser)
    args = parser.parse_args()

    def config(layers: list[int], folder: Path):
        return common.plan_run_config(
            args.config, args.set, layers, folder, steps=args.warmup_steps + args.batches,
            batch_size=args.batch_size, eval_examples=args.eval_examples,
        )  # fmt: skip

    # the ranking the probe stage makes (the configured scorer and site), in a scratch folder
    probe_cfg = load_config(
        args.config, args.set, {"probe.steps": args.probe_steps, "output_dir": str(args.work / "probe")}
    )
    loaded = load_for(probe_cfg.model, task_spec(probe_cfg.task).num_labels, setup().device)
    device, num_layers = loaded.device, loaded.arch.num_layers
    ranking = select(run_probe(probe_cfg, loaded)["scores"], k="all").ranking
    del loaded

    variants: dict[int, dict[str, Any]] = {}
    for k in range(1, num_layers + 1):
        layers = sorted(ranking[:k])
        # the first step of the timed runs, alone
        one_step = config(layers, args.work / f"k{k}-saved").with_overrides({"train.max_steps": 1})
        saved = saved_for_backward_bytes(one_step)
        variants[k] = {"layers": layers, "saved_mib": saved / 2**20, "steps": []}
    for rep in range(args.reps):
        for k in common.interleaved(list(variants), rep):
            v = variants[k]
            summary, log = common.train(config(v["layers"], args.work / f"k{k}-{rep}"))
            v["trainable"], precision = summary["trainable_parameters"], summary["precision"]
            v["steps"] += log[args.warmup_steps :]
        print(f"rep {rep} done", flush=True)

    rows = []
    for k, v in variants.items():
        steps = v["steps"]
        row = {
            "k": k,
            "layers": v["layers"],
            "trainable_parameters": v["trainable"],
            **{f"{p}_ms": round(statistics.median(s[f"{p}_ms"] for s in steps), 2) for p in PHASES},
            "total_ms": round(statistics.median(map(common.step_ms, steps)), 2),
            "saved_for_backward_mib": round(v["saved_mib"], 1),
            "trainable_state_mib": round(16 * v["trainable"] / 2**20, 2),
        }
        if device.type == "cuda":
            for key in CUDA_MEMORY:
                row[key] = max(s[key] for s in steps)
        rows.append(row)
    full = rows[-1]["total_ms"]
    for row in rows:
        row["ratio_to_all"] = round(row["total_ms"] / full, 4)

    doc = common.header("topk_sweep", device, args.machine, code=(actlora_cli.train,))
    doc |= {
        "model": summary["model"],
        "settings": {"config": args.config, "set": args.set, "probe_steps": args.probe_steps,
                     "batch_size": args.batch_size, "timed_steps_per_run": args.batches,
                     "warmup_steps": args.warmup_steps, "reps": args.reps, "precision": precision},
        "ranking": ranking,
        "scorer": probe_cfg.probe.scorer,
        "site": probe_cfg.probe.site,
        "rows": rows,
    }  # fmt: skip
    cuda = device.type == "cuda"
    head = "| k | layers | trainable | forward ms | backward ms | optimizer ms | total ms | ratio to k=L |"
    mem_cols = (
        " after fwd MiB | peak MiB | after step MiB |"
        if cuda
        else " saved for backward MiB | trainable state MiB |"
    )
    lines = common.markdown_header("Top-k step time and memory by phase", doc) + [
        f"ranking ({probe_cfg.probe.scorer}, {probe_cfg.probe.site}): {ranking}; {args.batches} timed steps "
        f"of batch {args.batch_size} per run (after {args.warmup_steps} untimed), {args.reps} runs per k: "
        f"`run_train`'s own steps, {precision}.",
        "",
        head + mem_cols,
        "|" + "---|" * (8 + (3 if cuda else 2)),
    ]
    for r in rows:
        mem = (
            "".join(f" {r[key]} |" for key in CUDA_MEMORY)
            if cuda
            else f" {r['saved_for_backward_mib']} | {r['trainable_state_mib']} |"
        )
        lines.append(
            f"| {r['k']} | {r['layers']} | {r['trainable_parameters']:,} | {r['forward_ms']} "
            f"| {r['backward_ms']} | {r['optimizer_ms']} | {r['total_ms']} | {r['ratio_to_all']} |" + mem
        )
    common.write_result(args.out, doc, "\n".join(lines))


if __name__ == "__main__":
    main()
