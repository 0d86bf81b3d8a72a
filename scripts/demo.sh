#!/usr/bin/env bash
# `make demo`: the main job end to end on one easy task. Outputs go under data/ and runs/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
MFP=.venv/bin/mfp
TASK=${TASK:-metaworld/drawer-open}
EPISODES=${EPISODES:-10}
NAME=${TASK//\//_}
DATA=data/demo/${NAME}.zarr

echo "== 1. collect $EPISODES expert demonstrations of $TASK -> $DATA"
rm -rf "$DATA"
$MFP collect --task "$TASK" --episodes "$EPISODES" --out "$DATA"
echo
echo "Dataset written: $DATA"
.venv/bin/python - "$DATA" <<'PY'
import sys
from mfp.demos.store import DemoStore
s = DemoStore.open(sys.argv[1])
print(f"  episodes: {s.n_episodes}, steps: {s.n_steps}, seeds: {s.attrs['episode_seeds']}")
for k in s.keys():
    a = s.root["data/" + k]
    print(f"  data/{k}: shape {a.shape}, dtype {a.dtype}")
PY
