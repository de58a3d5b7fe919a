"""Training step time of LoRA plans, side by side in one run, and the floor of a plan.

For each plan (e.g. every layer, and the top-heavy 3-5 of MiniLM) one training step is the project's own:
forward in train mode, the loss, backward, AdamW step. The plans are timed interleaved (A B A B ...) over the
same fixed batches, so machine noise hits them alike; the report gives medians and ratios.

The floor of a plan is what a step cannot go below: a forward pass of the frozen model (no grad) plus the
backward pass over the adapted span alone. The span's backward is measured on a graph whose input at the
lowest adapted layer is explicitly detached, so it holds only the span, whatever autograd would otherwise do.

    python benchmarks/step_time.py --plans all 3-5 --reps 5 --batches 12
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from actlora_cli.adapters import apply_lora, count_parameters
from actlora_cli.config import load_config
from actlora_cli.data import batch_indices, collate, encode, load_examples, task_spec
from actlora_cli.distributed import setup
from actlora_cli.modeling import load_for
from actlora_cli.train import compute_loss


def machine_name() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model


def parse_plan(text: str, num_layers: int) -> list[int]:
    if text == "all":
        return list(range(num_layers))
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, optimizer, batches, device) -> list[float]:
    """Milliseconds per full training step (forward, loss, backward, optimizer)."""
    out = []
    model.train()
    for batch in batches:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        sync(device)
        start = time.perf_counter()
        loss = compute_loss(model(**inputs).logits, labels, False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        out.append(1000 * (time.perf_counter() - start))
    return out


@torch.no_grad()
def time_frozen_forward(model, batches, device) -> list[float]:
    out = []
    model.train()  # same dropout work as a training forward
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        sync(device)
        start = time.perf_counter()
        model(**inputs)
        sync(device)
        out.append(1000 * (time.perf_counter() - start))
    return out


def time_span_backward(model, layer_module, batches, device) -> list[float]:
    """Backward only, on a graph cut explicitly at the lowest adapted layer's input."""

    def cut(_module, args, kwargs):
        if args:
            return (args[0].detach(),) + args[1:], kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}

    handle = layer_module.register_forward_pre_hook(cut, with_kwargs=True)
    out = []
    model.train()
    try:
        for batch in batches:
            labels = batch["labels"]
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = compute_loss(model(**inputs).logits, labels, False)
            sync(device)
            start = time.perf_counter()
            loss.backward()
            sync(device)
            out.append(1000 * (time.perf_counter() - start))
            model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/minilm_movies.yaml")
    parser.add_argument("--plans", nargs="+", default=["all", "3-5"], help="'all', 'lo-hi' or 'a,b,c'")
    parser.add_argument("--batches", type=int, default=12, help="batches per timing round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    cfg = load_config(args.config)
    spec = task_spec(cfg.task)
    loaded = load_for(cfg.model, spec.num_labels, setup().device)
    device, arch = loaded.device, loaded.arch
    data = encode(loaded.tokenizer, load_examples(cfg.task, spec, "train"), cfg.task.max_length, False)
    batches = [
        collate(data, idx)
        for idx in batch_indices(len(data), args.batch_size, shuffle=True, seed=0)[: args.batches]
    ]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    torch.manual_seed(0)
    variants = {}
    for text in args.plans:
        layers = parse_plan(text, arch.num_layers)
        model = apply_lora(copy.deepcopy(loaded.model), arch, cfg.lora, layers)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
        variants[text] = {
            "layers": layers,
            "model": model,
            "optimizer": optimizer,
            "trainable": count_parameters(model)[0],
            "step": [],
            "span_backward": [],
        }
    frozen = loaded.model

    # warm-up, then interleaved rounds
    for v in variants.values():
        time_steps(v["model"], v["optimizer"], batches[:2], device)
    frozen_times: list[float] = []
    for _ in range(args.reps):
        frozen_times += time_frozen_forward(frozen, batches, device)
        for v in variants.values():
            v["step"] += time_steps(v["model"], v["optimizer"], batches, device)
            lowest = v["model"].get_base_model().get_submodule(arch.layer_path(min(v["layers"])))
            v["span_backward"] += time_span_backward(v["model"], lowest, batches, device)

    frozen_ms = statistics.median(frozen_times)
    baseline = args.plans[0]
    base_ms = statistics.median(variants[baseline]["step"])
    rows = []
    for text, v in variants.items():
        step_ms = statistics.median(v["step"])
        floor_ms = frozen_ms + statistics.median(v["span_backward"])
        rows.append(
            {
                "plan": text,
                "layers": v["layers"],
                "trainable_parameters": v["trainable"],
                "step_ms_median": round(step_ms, 2),
                "step_ms_min": round(min(v["step"]), 2),
                "ratio_to_" + baseline: round(step_ms / base_ms, 4),
                "frozen_forward_ms": round(frozen_ms, 2),
                "span_backward_ms": round(statistics.median(v["span_backward"]), 2),
                "floor_ms": round(floor_ms, 2),
                "step_over_floor": round(step_ms / floor_ms, 4),
            }
        )
    result = {
        "machine": {
            "cpu": machine_name(),
            "cores": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "versions": {"torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/step_time.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
        ),
        "model": cfg.model.name,
        "batch_size": args.batch_size,
        "batches_per_round": args.batches,
        "reps": args.reps,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (
        "gpu-" + result["machine"]["gpu"].replace(" ", "_")
        if result["machine"]["gpu"]
        else f"cpu-{torch.get_num_threads()}core"
    )
    (out / f"step_time_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Step time by plan ({result['machine']['cpu']}, {result['machine']['cores']} threads, {result['date']})",
        "",
        f"`{result['command']}`",
        "",
        f"| plan | layers | trainable | step ms (median) | ratio to {baseline} | frozen fwd ms | span bwd ms | floor ms | step / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['plan']} | {r['layers']} | {r['trainable_parameters']:,} | {r['step_ms_median']} "
            f"| {r['ratio_to_' + baseline]} | {r['frozen_forward_ms']} | {r['span_backward_ms']} "
            f"| {r['floor_ms']} | {r['step_over_floor']} |"
        )
    text = "\n".join(lines) + "\n"
    (out / f"step_time_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
