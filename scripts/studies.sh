#!/usr/bin/env bash
# Reproduces the committed studies in results/studies/minilm/ (packaged MiniLM, packaged sentiment data):
# seed stability, task agreement, correlation with ablation importance, tau thresholds. About 15 minutes on a
# 2-core CPU, about 50 more for the training-regime stability study (results/studies/minilm_training_regime/),
# and about an hour for the same probe-side studies on the 30-layer SmolLM2-135M (results/studies/smollm2/).
# Each command is the documented one; nothing here is special to these results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
CFG=configs/minilm_movies_demo.yaml
RUN=runs/minilm_movies_demo_lora_all   # LoRA on every layer: the ablation reference
OUT=results/studies/minilm
S=50                                     # probe batches per score vector in the studies
actlora data fetch
[ -f "$RUN/adapter/adapter_config.json" ] || actlora train --config "$CFG" -o "$RUN" --k all
actlora ablate --config "$CFG" -o "$RUN"
actlora study correlation --config "$CFG" -o "$RUN" --set probe.steps=$S --out "$OUT"
actlora study stability   --config "$CFG" --set probe.steps=$S --scorers activation_norm,grad_norm,cka --seeds 10 --ks 2,3,4 --out "$OUT"
# the same study with probe.regime=training (each probe batch a LoRA optimizer step; README there), at S=10 and
# 3 seeds (about 45 minutes on a shared 2-core CPU), and the inference regime at those S and seeds beside it
TR=results/studies/minilm_training_regime
actlora study stability   --config "$CFG" --set probe.steps=10 --set probe.regime=training --scorers activation_norm,grad_norm,cka --seeds 3 --ks 2,3,4 --out "$TR"
actlora study stability   --config "$CFG" --set probe.steps=10 --scorers activation_norm,grad_norm,cka --seeds 3 --ks 2,3,4 --out "$TR/inference_matched"
actlora study tasks       --config "$CFG" --set probe.steps=$S --tasks movies,tweets,amazon,nyt --out "$OUT"
actlora probe --config "$CFG" -o runs/minilm_movies_demo
actlora study thresholds  --config "$CFG" -o runs/minilm_movies_demo --out "$OUT"
# The 30-layer packaged SmolLM2-135M (results/studies/smollm2/; see its README.md): about an hour on a busy
# 2-core CPU, most of it the gradient probes.
SMOL=configs/smollm2_135m_movies.yaml
SOUT=results/studies/smollm2
actlora study stability   --config "$SMOL" --scorers activation_norm,grad_norm,cka --seeds 3 --ks 3,6,10 --out "$SOUT"
actlora study thresholds  --config "$SMOL" -o "$SOUT/scores/activation_norm_seed0" --out "$SOUT"
