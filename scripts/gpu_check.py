"""GPU check: on a CUDA machine without internet, run the GPU-only tests and a short bf16 probe -> train ->
eval on random-weight models of the paper's shapes, and save a results file naming the machine.

    python scripts/gpu_check.py                       # DeBERTa-v3-base shape; Llama-3.1-8B shape
                                                      # (8 layers), bf16 and QLoRA
    python scripts/gpu_check.py --llama-layers 32     # the full depth, where memory allows
    python scripts/gpu_check.py --tiny --device cpu   # the same path on tiny shapes (CI runs this)

Models are built from configs with random weights (no weights travel), saved once to a folder, and then
loaded like any local model, so QLoRA's 4-bit loading path is the real one. The task is synthetic
(random sentences over a small word list, label = more positive than negative words), so nothing is
downloaded; metrics on it only show that training moves, the timings and memory are the point.
Prints and writes <out>/gpu_check_<device>.json and .md: step time by phase, peak memory, latency,
throughput, time to first token, the QLoRA memory beside the bf16 one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from actlora_cli.synthetic import save_model, write_task


def model_configs(tiny: bool, llama_layers: int):
    """Published shapes of DeBERTa-v3-base and Llama-3.1-8B (or tiny ones of the same families)."""
    from transformers import DebertaV2Config, LlamaConfig

    if tiny:
        return {
            "deberta-v3-base-shape": DebertaV2Config(
                vocab_size=128,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=128,
                relative_attention=True,
                pos_att_type=["p2c", "c2p"],
                position_buckets=16,
                max_relative_positions=-1,
                pooler_hidden_size=64,
                type_vocab_size=0,
                pad_token_id=0,
            ),
            "llama-3.1-8b-shape": LlamaConfig(
                vocab_size=128,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                pad_token_id=5,
            ),
        }
    return {
        "deberta-v3-base-shape": DebertaV2Config(
            vocab_size=128100,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=256,
            max_relative_positions=-1,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
            pooler_hidden_size=768,
            pad_token_id=0,
        ),
        "llama-3.1-8b-shape": LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            num_hidden_layers=llama_layers,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            pad_token_id=5,
        ),
    }


def build(folder: Path, config, decoder: bool) -> Path:
    return save_model(folder, config, decoder, dtype=torch.bfloat16 if decoder else torch.float32)


def run_stages(name: str, folder: Path, files: dict, run_dir: Path, args, quantization: str) -> dict:
    from actlora_cli.config import Config
    from actlora_cli.evaluation import run_eval
    from actlora_cli.probe import run_probe
    from actlora_cli.train import run_train

    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    cfg = Config.model_validate(
        {
            "model": {
                "name": str(folder),
                "dtype": "bfloat16" if args.device == "cuda" else "float32",
                "quantization": quantization,
            },
            "task": {
                "name": "custom",
                "files": files,
                "text_fields": ["text"],
                "label_field": "label",
                "num_labels": 2,
                "max_length": 128,
                "max_eval_examples": args.eval_examples,
            },
            "probe": {"steps": args.probe_steps, "batch_size": args.batch_size},
            "rank": {"k": max(1, layers // 2)},
            "train": {
                "batch_size": args.batch_size,
                "max_steps": args.steps,
                "epochs": 1,
                "precision": "bf16" if args.device == "cuda" else "fp32",
            },
            "output_dir": str(run_dir),
        }
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    scores = run_probe(cfg)
    from actlora_cli.rank import run_rank

    run_rank(cfg)
    summary = run_train(cfg, overwrite=True)  # a rerun of the check replaces its own earlier runs
    evaluation = run_eval(cfg, timing_batches=args.timing_batches)
    return {
        "model": name,
        "quantization": quantization,
        "layers": layers,
        "plan": summary["plan"]["layers"],
        "trainable_parameters": summary["trainable_parameters"],
        "total_parameters": summary["total_parameters"],
        "probe_ms_per_batch": scores["timings"]["per_batch_ms"],
        "step_ms": summary["mean_step_ms"],
        "train_samples_per_s": summary["samples_per_second"],
        "peak_memory_mib": summary["peak_memory_mib"],
        "precision": summary["precision"],
        "eval": evaluation["timing"],
        "metrics": evaluation["metrics"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke run of the same path)")
    parser.add_argument("--llama-layers", type=int, default=8, help="depth of the Llama-3.1-8B-shaped model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--probe-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--timing-batches", type=int, default=5)
    parser.add_argument("--work", default="/tmp/actlora_gpu_check")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --tiny for a smoke run")
    if args.device == "cpu":
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    work = Path(args.work)
    files = write_task(
        work / "task", n_train=args.batch_size * args.steps, n_val=args.eval_examples, words=(8, 60)
    )
    results = {"tests": None, "runs": []}
    if not args.skip_tests:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"],
            capture_output=True,
            text=True,
            check=False,
        )
        results["tests"] = {"returncode": proc.returncode, "tail": proc.stdout.strip().splitlines()[-1:]}
        print("GPU tests:", results["tests"])
    try:
        import bitsandbytes  # noqa: F401

        have_bnb = True
    except ImportError:
        have_bnb = False
    for name, config in model_configs(args.tiny, args.llama_layers).items():
        decoder = name.startswith("llama")
        folder = build(work / "models" / name, config, decoder)
        variants = ["none", "nf4"] if decoder and have_bnb else ["none"]
        for quantization in variants:
            row = run_stages(
                name, folder, files, work / "runs" / f"{name}-{quantization}", args, quantization
            )
            results["runs"].append(row)
            print(json.dumps(row))
        if decoder and not have_bnb:
            results["runs"].append(
                {"model": name, "quantization": "nf4", "skipped": "bitsandbytes is not installed"}
            )

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results["machine"] = {
        "device": device_name,
        "torch": torch.__version__,
        "tiny": args.tiny,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = device_name.replace(" ", "_") + ("_tiny" if args.tiny else "")
    (out / f"gpu_check_{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# GPU check on {device_name} ({results['machine']['date']})",
        "",
        f"`{results['machine']['command']}`",
        "",
        "| model | base | layers | plan | fwd / bwd / opt ms | train samples/s | peak MiB "
        "| latency p50 ms/ex | throughput /s | TTFT p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['quantization']} | skipped: {r['skipped']} |||||||")
            continue
        s, e = r["step_ms"], r["eval"]["unmerged"]
        lines.append(
            f"| {r['model']} | {r['quantization']} | {r['layers']} | {r['plan']} | "
            f"{s['forward']:.1f} / {s['backward']:.1f} / {s['optimizer']:.1f} | {r['train_samples_per_s']} | "
            f"{r['peak_memory_mib']} | {e['latency_ms_p50']} | {e['throughput_samples_per_s']} | "
            f"{r['eval'].get('time_to_first_token_ms_p50', '')} |"
        )
    text = "\n".join(lines) + "\n"
    (out / f"gpu_check_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
