#!/usr/bin/env bash
# The main job on the offline default (packaged MiniLM, packaged movie sentences), end to end:
# probe -> rank -> train Act-LoRA (k=3) -> eval, and the baseline LoRA on all 6 layers -> eval,
# then the comparison. About 5 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
CFG=configs/minilm_movies_demo.yaml
ACT=runs/minilm_movies_demo
BASE=runs/minilm_movies_demo_lora_all
actlora data fetch
actlora probe --config "$CFG" -o "$ACT"
actlora rank  --config "$CFG" -o "$ACT" --k 3
actlora train --config "$CFG" -o "$ACT" --overwrite      # a rerun replaces the earlier demo run
actlora eval  --config "$CFG" -o "$ACT"
actlora train --config "$CFG" -o "$BASE" --k all --overwrite
actlora eval  --config "$CFG" -o "$BASE"
actlora compare "$ACT" --baseline "$BASE" --out runs/minilm_movies_demo_comparison.json
