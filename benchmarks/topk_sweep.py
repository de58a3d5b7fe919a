"""Step time and memory by phase for k = 1..L (the shape of the Act-LoRA paper's Table 7): LoRA on the top-k
layers of the activation-norm ranking, one training step split into forward, backward and optimizer, the k
variants interleaved over the same fixed batches (A B C ... then reversed), medians reported.

Memory: on CUDA, allocated memory after the forward, the step's peak and after the step (as Table 7). On CPU
there is no allocator to ask, so the two quantities that grow with k are measured directly: the bytes autograd
saves for the backward (activations kept by the forward; unique storages, via saved_tensors_hooks) and the
trainable state (weights, gradients and AdamW's two moments: 16 bytes per fp32 parameter).

    python -m benchmarks.topk_sweep --reps 3 --batches 8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from actlora_cli.adapters import apply_lora, count_parameters
from actlora_cli.config import load_config
from actlora_cli.data import batch_indices, collate, encode, load_examples, task_spec
from actlora_cli.distributed import setup
from actlora_cli.modeling import load_for
from actlora_cli.probe import run_probe
from actlora_cli.selection import select
from actlora_cli.train import PhaseTimer, compute_loss


def saved_bytes(model, inputs, labels) -> int:
    """Bytes autograd keeps for the backward of one forward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = compute_loss(model(**inputs).logits, labels, False)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def time_phases(model, optimizer, batches, device) -> list[dict]:
    timer = PhaseTimer(device)
    out = []
    model.train()
    for batch in batches:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        timer.start()
        loss = compute_loss(model(**inputs).logits, labels, False)
        timer.mark()
        after_forward = timer.memory()
        loss.backward()
        timer.mark()
        peak = timer.memory(peak=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.mark()
        fwd, bwd, opt = timer.durations_ms()
        out.append(
            {
                "forward": fwd,
                "backward": bwd,
                "optimizer": opt,
                "mem_after_forward": after_forward,
                "mem_peak": peak,
                "mem_after_step": timer.memory(),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies.yaml")
    parser.add_argument("--probe-steps", type=int, default=50)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--set", action="append", default=[], help="config override key=value (e.g. model.random_init=true)"
    )
    parser.add_argument("--work", default="/tmp/actlora_topk_bench")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"probe.steps={args.probe_steps}", *args.set])
    spec = task_spec(cfg.task)
    ctx = setup()
    loaded = load_for(cfg.model, spec.num_labels, ctx.device)
    arch, device = loaded.arch, loaded.device
    data = encode(loaded.tokenizer, load_examples(cfg.task, spec, "train"), cfg.task.max_length, False)

    # the ranking the probe stage makes (the configured scorer and site), in a scratch folder
    scores = run_probe(cfg.model_copy(update={"output_dir": args.work}), loaded)["scores"]
    ranking = select(scores, k="all").ranking

    batches = [
        collate(data, idx)
        for idx in batch_indices(len(data), args.batch_size, shuffle=True, seed=0)[: args.batches]
    ]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    variants = {}
    torch.manual_seed(0)
    for k in range(1, arch.num_layers + 1):
        layers = sorted(ranking[:k])
        model = apply_lora(copy.deepcopy(loaded.model), arch, cfg.lora, layers)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
        trainable = count_parameters(model)[0]
        variants[k] = {
            "layers": layers,
            "model": model,
            "optimizer": optimizer,
            "trainable": trainable,
            "steps": [],
            "saved_mib": saved_bytes(
                model, {x: v for x, v in batches[0].items() if x != "labels"}, batches[0]["labels"]
            )
            / 2**20,
        }
    for v in variants.values():
        time_phases(v["model"], v["optimizer"], batches[:2], device)  # warm-up
    for rep in range(args.reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for k in order:
            v = variants[k]
            v["steps"] += time_phases(v["model"], v["optimizer"], batches, device)
        print(f"rep {rep} done", flush=True)

    rows = []
    for k, v in variants.items():
        med = {p: statistics.median(s[p] for s in v["steps"]) for p in ("forward", "backward", "optimizer")}
        row = {
            "k": k,
            "layers": v["layers"],
            "trainable_parameters": v["trainable"],
            **{f"{p}_ms": round(m, 2) for p, m in med.items()},
            "total_ms": round(
                statistics.median(s["forward"] + s["backward"] + s["optimizer"] for s in v["steps"]), 2
            ),
            "saved_for_backward_mib": round(v["saved_mib"], 1),
            "trainable_state_mib": round(16 * v["trainable"] / 2**20, 2),
        }
        if device.type == "cuda":
            for key in ("mem_after_forward", "mem_peak", "mem_after_step"):
                row[key + "_mib"] = max(s[key] for s in v["steps"])
        rows.append(row)
    full = rows[-1]["total_ms"]
    for row in rows:
        row["ratio_to_all"] = round(row["total_ms"] / full, 4)

    try:
        from benchmarks.step_time import machine_name
    except ImportError:  # run as `python benchmarks/padding.py`: the folder itself is on the path
        from step_time import machine_name

    tag = (
        "gpu-" + torch.cuda.get_device_name().replace(" ", "-")
        if device.type == "cuda"
        else f"cpu-{torch.get_num_threads()}core"
    )
    result = {
        "machine": {
            "cpu": machine_name(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "label": tag,
        },
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.topk_sweep "
        + " ".join(f"--{a.replace('_', '-')} {v}" for a, v in vars(args).items() if a != "set")
        + "".join(f" --set {s}" for s in args.set),
        "model": arch.identity(cfg.model.name),
        "batch_size": args.batch_size,
        "ranking": ranking,
        "scorer": cfg.probe.scorer,
        "site": cfg.probe.site,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"topk_sweep_{tag}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    head = "| k | layers | trainable | forward ms | backward ms | optimizer ms | total ms | ratio to k=L |"
    mem_cols = (
        " after fwd MiB | peak MiB | after step MiB |"
        if device.type == "cuda"
        else " saved for backward MiB | trainable state MiB |"
    )
    lines = [
        f"# Top-k step time and memory by phase ({result['machine']['cpu']}, {device}, {result['date']})",
        "",
        f"`{result['command']}`",
        "",
        f"ranking ({cfg.probe.scorer}, {cfg.probe.site}): {ranking}",
        "",
        head + mem_cols,
        "|" + "---|" * (8 + (3 if device.type == "cuda" else 2)),
    ]
    for r in rows:
        mem = (
            f" {r['mem_after_forward_mib']} | {r['mem_peak_mib']} | {r['mem_after_step_mib']} |"
            if device.type == "cuda"
            else f" {r['saved_for_backward_mib']} | {r['trainable_state_mib']} |"
        )
        lines.append(
            f"| {r['k']} | {r['layers']} | {r['trainable_parameters']:,} | {r['forward_ms']} | {r['backward_ms']} "
            f"| {r['optimizer_ms']} | {r['total_ms']} | {r['ratio_to_all']} |" + mem
        )
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
