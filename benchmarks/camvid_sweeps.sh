#!/usr/bin/env bash
# The CamVid sweeps behind docs/results.md: protocol experiment=cpu_camvid, 2 seeds each.
# Usage: benchmarks/camvid_sweeps.sh [CAMVID_ROOT] [OUT_DIR] [extra overrides...]
# Sweeps run one after another; PARALLEL=1 starts them all at once (for a GPU machine).
set -uo pipefail
ROOT=${1:-../shared/data/camvid}
OUT=${2:-outputs/camvid_results}
shift 2 || true
ALSEG=${ALSEG:-alseg}
COMMON=(experiment=cpu_camvid "dataset.root=$ROOT" save_model=never overlay_images=2 "$@")
CLICKS=(budget=clicks budget.initial=2000 budget.per_cycle=2000)

sweep() {  # sweep NAME overrides...
    local name=$1; shift
    $ALSEG run -m "${COMMON[@]}" "$@" seed=0,1 "hydra.sweep.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "$name: exit $?"
}

mkdir -p "$OUT"
jobs=(
    "pixels_basic strategy=random,entropy,margin"
    "pixels_top5 strategy=margin strategy.top_percent=0.05"
    "pixels_classbal strategy=margin strategy.class_balance=true"
    "pixels_diverse strategy=bald,coreset,hybrid"
    "seeds_dominant region=seeds region.num_superpixels=150 annotation=dominant strategy=random,margin ${CLICKS[*]}"
    "seeds_classbal region=seeds region.num_superpixels=150 annotation=dominant strategy=margin strategy.class_balance=true ${CLICKS[*]}"
    "box_precise region=box region.size=16 annotation=precise strategy=random,margin ${CLICKS[*]}"
    "full budget=full"
)
for job in "${jobs[@]}"; do
    # shellcheck disable=SC2086
    if [ "${PARALLEL:-0}" = 1 ]; then sweep $job & else sweep $job; fi
done
wait
