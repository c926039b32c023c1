#!/usr/bin/env bash
# The CamVid sweeps behind docs/results.md: protocol experiment=cpu_camvid, 3 seeds each,
# paired by seed (runs of one seed share cycle 0 and the initial weights).
# Usage: benchmarks/camvid_sweeps.sh [CAMVID_ROOT] [OUT_DIR] [extra overrides...]
# Each sweep runs JOBS runs at a time (joblib, one thread each; default 2 for 2 cores).
# Then: alseg plot OUT_DIR/pixels* --baseline random --out docs/results/paired
set -uo pipefail
ROOT=${1:-../shared/data/camvid}
OUT=${2:-outputs/camvid_results}
shift 2 || true
ALSEG=${ALSEG:-alseg}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
COMMON=(experiment=cpu_camvid "dataset.root=$ROOT" save_model=never overlay_images=2
        hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS" "$@")

sweep() {  # sweep NAME overrides...
    local name=$1; shift
    $ALSEG run -m "${COMMON[@]}" "$@" "hydra.sweep.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? $(date +%H:%M:%S)"
}

mkdir -p "$OUT"
sweep pixels strategy=random,margin seed=0,1,2
sweep pixels_power strategy=margin strategy.sampling=power seed=0,1,2
sweep pixels_entropy strategy=entropy strategy.sampling=topk,power seed=0,1,2
sweep full budget=full seed=0
sweep pixels_top5 strategy=margin strategy.top_percent=0.05 seed=0,1,2
sweep pixels_bald strategy=bald seed=0,1,2
