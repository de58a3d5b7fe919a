#!/usr/bin/env bash
# A small sweep on the offline default (packaged MiniLM, packaged movie sentences): methods lora, ia3 x
# k all, 3 x seeds 0, 1 = 8 runs, one probe, then the comparison against LoRA on every layer. Sized to
# finish in about 10 minutes on an idle 2-core CPU: 1,024 training sentences x 2 epochs at lr 2e-3 (64 steps:
# enough to learn the task, where 800 x 1 epoch at 1e-3 stays near chance) and 400 validation sentences (the
# demo config takes 4,000 and 1,000), and 40 probe batches.
# Run it again to resume: finished points are skipped. Extra arguments go to `actlora sweep` and win over
# the ones here, e.g. `bash scripts/sweep.sh --dry-run` or `--set task.max_train_examples=200`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
actlora data fetch
actlora sweep --config configs/minilm_movies_demo.yaml --out runs/sweep_movies_demo \
  --methods lora,ia3 --k all,3 --seeds 0,1 --tasks movies \
  --set task.max_train_examples=1024 --set task.max_eval_examples=400 --set probe.steps=40 \
  --set train.epochs=2 --set train.lr=2e-3 \
  "$@"
