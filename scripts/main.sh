#!/usr/bin/env bash
# The main job on the offline default: the packaged MiniLM on the packaged movie sentences.
# probe -> rank (Act-LoRA, k=3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
CFG=configs/minilm_movies.yaml
actlora data fetch
actlora probe --config "$CFG"
actlora rank --config "$CFG" --k 3
