#!/usr/bin/env bash
# The main job on the offline default (packaged MiniLM, packaged movie sentences), end to end:
# probe -> rank -> train Act-LoRA (k=3) -> eval, the baseline LoRA on all 6 layers -> eval, and the
# top-heavy plan of the same k (layers 3-5, no probe) -> eval, then the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
CFG=configs/minilm_movies_demo.yaml
ACT=runs/minilm_movies_demo
BASE=runs/minilm_movies_demo_lora_all
LAST=runs/minilm_movies_demo_last3
actlora data fetch
actlora probe --config "$CFG" -o "$ACT"
actlora rank  --config "$CFG" -o "$ACT" --k 3
actlora train --config "$CFG" -o "$ACT" --overwrite      # a rerun replaces the earlier demo run
actlora eval  --config "$CFG" -o "$ACT"
actlora train --config "$CFG" -o "$BASE" --k all --overwrite
actlora eval  --config "$CFG" -o "$BASE"
# the obvious alternative at the same k, with no probe: the top-heavy plan (the last 3 layers)
actlora train --config "$CFG" -o "$LAST" --strategy last --k 3 --overwrite
actlora eval  --config "$CFG" -o "$LAST"
actlora compare "$ACT" "$LAST" --baseline "$BASE" --out runs/minilm_movies_demo_comparison.json
