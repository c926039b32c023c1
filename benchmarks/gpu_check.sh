#!/usr/bin/env bash
# GPU check (needs a CUDA machine): one short CamVid cycle through the CLI, then the
# benchmarks on the whole CamVid train pool at 360x480, with the costliest operators of
# each scoring (bench.json also holds stream_epoch_ratio, placement=host vs device, and the
# peak GPU memory of both), in a few minutes. Usage: benchmarks/gpu_check.sh [CAMVID_ROOT] [OUT_DIR]
set -euo pipefail
ROOT=$(realpath "${1:-../shared/data/camvid}")
OUT=$(realpath -m "${2:-outputs/gpu_check}")
BENCH=$(realpath "$(dirname "$0")/bench.py")
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
cd "${TMPDIR:-/tmp}"  # run the installed alseg, not a checkout's folder of the same name
"$PY" -m alseg.cli run experiment=cpu_camvid dataset.root="$ROOT" dataset.size=[360,480] device=cuda \
    budget.cycles=1 train.epochs=5 hydra.run.dir="$OUT/run"
"$PY" "$BENCH" --root "$ROOT" --device cuda --images 0 --size 360 480 --batch-size 16 --rounds 4 \
    --profile --out "$OUT/bench.json"
