#!/usr/bin/env bash
# GPU check (needs a CUDA machine): one short CamVid cycle through the CLI, then the
# benchmarks, in a few minutes. Usage: benchmarks/gpu_check.sh [CAMVID_ROOT] [OUT_DIR]
set -euo pipefail
ROOT=${1:-../shared/data/camvid}
OUT=${2:-outputs/gpu_check}
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" -m alseg.cli run experiment=cpu_camvid dataset.root="$ROOT" dataset.size=[360,480] device=cuda \
    budget.cycles=1 train.epochs=5 hydra.run.dir="$OUT/run"
"$PY" "$(dirname "$0")/bench.py" --root "$ROOT" --device cuda --batch-size 16 --repeats 3 --out "$OUT/bench.json"
