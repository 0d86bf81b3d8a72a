#!/usr/bin/env bash
# `make demo`: the main job end to end on one easy task — collect expert demonstrations, train a 1-step
# MeanFlow policy briefly (small preset, CPU), evaluate it on held-out seeds, print success and latency.
# Budgeted for about 15 minutes on a 2-core machine with or without native bf16 (README: measured figures).
# Outputs go under data/demo and runs/demo (ignored by git).
# Override with environment variables, e.g. `TASK=metaworld/button-press STEPS=3000 AMP=none make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
MFP=.venv/bin/mfp
TASK=${TASK:-metaworld/drawer-open}
EPISODES=${EPISODES:-10}
STEPS=${STEPS:-1000}
BATCH=${BATCH:-32}
AMP=${AMP:-auto}
EVAL_EPISODES=${EVAL_EPISODES:-20}
NAME=${TASK//\//_}
DATA=data/demo/${NAME}.zarr
RUN=runs/demo/${NAME}-meanflow

echo "== 1/3 collect $EPISODES expert demonstrations of $TASK -> $DATA"
rm -rf "$DATA"
$MFP collect --task "$TASK" --episodes "$EPISODES" --out "$DATA"

echo "== 2/3 train a 1-step MeanFlow policy (small preset, $STEPS steps of batch $BATCH, --amp $AMP) -> $RUN"
rm -rf "$RUN"
$MFP train --data "$DATA" --head meanflow --preset small --steps "$STEPS" --batch-size "$BATCH" \
    --amp "$AMP" --out "$RUN"

echo "== 3/3 evaluate the EMA policy on $EVAL_EPISODES held-out episodes (parallel workers, 2 videos)"
$MFP eval --ckpt "$RUN" --episodes "$EVAL_EPISODES"
echo
echo "Dataset:    $DATA"
echo "Checkpoint: $RUN/last.safetensors   (training logs: tensorboard --logdir $RUN/tb)"
echo "Results:    $RUN/eval-last.json"
echo "Videos:     $RUN/eval-last/videos/   point cloud the policy sees: $RUN/eval-last/point_cloud.png"
