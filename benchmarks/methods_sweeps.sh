#!/usr/bin/env bash
# The CamVid comparisons of the newer methods in docs/results.md (issue 18): protocol
# experiment=cpu_camvid, seeds paired as in camvid_sweeps.sh.
# Usage: benchmarks/methods_sweeps.sh [pixels|superpixels|all] [CAMVID_ROOT] [OUT_DIR] [SEEDS]
# Then: alseg plot OUT_DIR/<sweep> ... --baseline VALUE --out docs/results/<name>
set -uo pipefail
PART=${1:-all}
ROOT=${2:-../shared/data/camvid}
OUT=${3:-outputs/camvid_methods}
SEEDS=${4:-0,1}
ALSEG=${ALSEG:-alseg}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
# train.reinit=true: these comparisons were made before cpu_camvid fine-tuned from cycle to cycle
COMMON=(experiment=cpu_camvid train.reinit=true "dataset.root=$ROOT" save_model=never overlay_images=2
        hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS")
# SEEDS superpixels with dominant labels, bought in clicks (Cai et al.'s setting, scaled down)
SUPERPIXELS=(region.num_superpixels=150 budget=clicks budget.initial=2000 budget.per_cycle=2000
             strategy=margin)

sweep() {  # sweep NAME overrides...
    local name=$1; shift
    $ALSEG run -m "${COMMON[@]}" "$@" "hydra.sweep.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? $(date +%H:%M:%S)"
}

mkdir -p "$OUT"
if [[ $PART == pixels || $PART == all ]]; then
    sweep pixels "seed=$SEEDS" strategy=random,margin,entropy,ripu
    sweep pixels_pseudo "seed=$SEEDS" strategy=random,margin train.semi=pseudo_label
    sweep pixels_seed2 seed=2 strategy=entropy,ripu  # RIPU vs entropy with 3 seeds
fi
if [[ $PART == superpixels || $PART == all ]]; then
    sweep seeds_dominant "seed=$SEEDS" region=seeds "${SUPERPIXELS[@]}" annotation=dominant
    sweep seeds_multiclass "seed=$SEEDS" region=seeds "${SUPERPIXELS[@]}" annotation=multiclass
    sweep seeds_adaptive "seed=$SEEDS" region=adaptive "${SUPERPIXELS[@]}" annotation=dominant annotation.sieve=true
fi
