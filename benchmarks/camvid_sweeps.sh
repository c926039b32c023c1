#!/usr/bin/env bash
# The CamVid sweeps behind docs/results.md: protocol experiment=cpu_camvid, paired by seed (runs
# of one seed share cycle 0 and the initial weights). Two queues of sweeps run side by side,
# one run at a time each with one thread (2 cores).
# Usage: benchmarks/camvid_sweeps.sh [protocol|scratch|scratch_variance|scratch_full|scratch_it900|scratch_balanced|scratch_frozen|scratch_frozen_decomp|main|seeds|variance|all] [CAMVID_ROOT] [OUT_DIR]
#   protocol: random and top-k margin, each from scratch and fine-tuned (train.reinit), seeds 0-2
#   scratch:  the paired table as shipped (from scratch every cycle, OUT_DIR/scratch10): seeds 0-9
#             of random, margin, margin + top 5%, power margin, power entropy, entropy and BALD,
#             full supervision
#   scratch_variance: random as shipped but with the cosine schedule (seeds 0-9, OUT_DIR/variance),
#             and the training seed apart from the selection's (OUT_DIR/variance/scratch_decomp)
#   scratch_full: full supervision over seeds 0-9 with 450 steps as shipped and with 900
#             (OUT_DIR/variance/scratch_full): the network's own spread when every pixel is labelled
#   scratch_it900: random and margin from scratch with 900 steps per cycle, seeds 0-9
#             (OUT_DIR/variance/scratch_it900)
#   scratch_balanced: random and margin from scratch with median frequency balancing
#             (train.class_weights=median_frequency), seeds 0-9 (OUT_DIR/variance/scratch_balanced)
#   scratch_frozen: random and margin from scratch with the encoder pretrained on synthetic scenes
#             (benchmarks/pretrain_synthetic.py) frozen (model.freeze_encoder), and random with it
#             trained, seeds 0-9, full supervision with it frozen, and random with it frozen and
#             batch 32 or 900 steps (OUT_DIR/variance/scratch_frozen)
#   scratch_frozen_decomp: random with that encoder frozen, the training seed apart from the
#             selection's (seed=0 train.seed=0-9; seed=1-9 train.seed=0), and 5 pixels per image
#             per cycle, seeds 0-9 (OUT_DIR/variance/scratch_frozen_decomp)
#   The parts below are the fine-tuned protocol (train.reinit=false, cpu_camvid's default before):
#   main:     the paired table's other strategies (seeds 0-4), seeds 3-4 of random and margin,
#             and full supervision (450 steps, and 2250: what the last fine-tuned cycle has had)
#   seeds:    seeds 5-9 of random, margin, margin + top 5%, power margin, BALD and entropy (10
#             seeds where the 5-seed interval was wider than +-1)
#   variance: random only, protocol variants tried to lower its seed std (OUT_DIR/variance),
#             margin with the 5-network ensemble (OUT_DIR/ens5), and the training seed apart
#             from the selection's (train.seed, OUT_DIR/variance/decomp)
# Then: alseg plot OUT_DIR/... --baseline random --out docs/results/... (see docs/results.md)
set -uo pipefail
PART=${1:-all}
ROOT=${2:-../shared/data/camvid}
OUT=${3:-outputs/camvid_results}
ALSEG=${ALSEG:-alseg}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=1
COMMON=(experiment=cpu_camvid "dataset.root=$ROOT" save_model=never overlay_images=2)

queue() {  # queue "NAME|overrides" ...: one sweep after the other
    for spec in "$@"; do
        local name=${spec%%|*}
        # shellcheck disable=SC2086  # the overrides are words
        $ALSEG run -m "${COMMON[@]}" ${spec#*|} "hydra.sweep.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
        echo "$name: exit $? $(date +%H:%M:%S)"
    done
}

synthetic_encoder() {  # SYNTH: the encoder pretrained on synthetic scenes, made if missing (5-7
    # minutes; the same file on every run of a machine); FROZEN: the overrides that load it frozen
    SYNTH=$OUT/variance/synthetic_encoder.pt
    [[ -f $SYNTH ]] || $PYTHON benchmarks/pretrain_synthetic.py "$SYNTH" > "$OUT/variance/synthetic_encoder.log"
    FROZEN="model.encoder_weights=$SYNTH model.freeze_encoder=true"
}

mkdir -p "$OUT"
if [[ $PART == protocol || $PART == all ]]; then
    # one sweep, two runs at a time; its fine-tuned runs are the table's random and margin
    queue "reinit|hydra/launcher=joblib hydra.launcher.n_jobs=2 seed=0,1,2 train.reinit=true,false strategy=random,margin"
fi
if [[ $PART == scratch || $PART == all ]]; then
    mkdir -p "$OUT/scratch10"
    queue "scratch10/random_a|strategy=random seed=0,1,2,3,4" "scratch10/margin_a|strategy=margin seed=0,1,2,3,4" \
          "scratch10/top5|strategy=margin strategy.top_percent=0.05 seed=0,1,2" \
          "scratch10/power_margin|strategy=margin strategy.sampling=power seed=0,1,2" "scratch10/bald_a|strategy=bald seed=0,1" \
          "scratch10/full|budget=full seed=0" \
          "scratch10/top5_s34|strategy=margin strategy.top_percent=0.05 seed=3,4" \
          "scratch10/power_margin_s34|strategy=margin strategy.sampling=power seed=3,4" \
          "scratch10/top5_s59|strategy=margin strategy.top_percent=0.05 seed=5,6,7,8,9" \
          "scratch10/power_entropy_s57|strategy=entropy strategy.sampling=power seed=5,6,7" \
          "scratch10/entropy_s59|strategy=entropy seed=5,6,7,8,9" &
    queue "scratch10/random_b|strategy=random seed=5,6,7,8,9" "scratch10/margin_b|strategy=margin seed=5,6,7,8,9" \
          "scratch10/entropy|strategy=entropy seed=0,1,2" \
          "scratch10/power_entropy|strategy=entropy strategy.sampling=power seed=0,1,2" "scratch10/bald_b|strategy=bald seed=2" \
          "scratch10/entropy_s34|strategy=entropy seed=3,4" \
          "scratch10/power_entropy_s34|strategy=entropy strategy.sampling=power seed=3,4" "scratch10/bald_s34|strategy=bald seed=3,4" \
          "scratch10/power_margin_s59|strategy=margin strategy.sampling=power seed=5,6,7,8,9" \
          "scratch10/power_entropy_s89|strategy=entropy strategy.sampling=power seed=8,9" \
          "scratch10/bald_s59|strategy=bald seed=5,6,7,8,9" &
    wait
fi
if [[ $PART == scratch_variance || $PART == all ]]; then
    mkdir -p "$OUT/variance/scratch_decomp"
    queue "variance/scratch_cosine_a|strategy=random train.schedule=cosine seed=0,1,2,3,4" &
    queue "variance/scratch_cosine_b|strategy=random train.schedule=cosine seed=5,6,7,8,9" &
    wait
    queue "variance/scratch_decomp/train|strategy=random seed=0 train.seed=0,1,2,3,4" &
    queue "variance/scratch_decomp/select14|strategy=random seed=1,2,3,4 train.seed=0" &
    wait
fi
if [[ $PART == scratch_full || $PART == all ]]; then
    mkdir -p "$OUT/variance/scratch_full"
    queue "variance/scratch_full/a|budget=full seed=0,1,2,3,4" &
    queue "variance/scratch_full/b|budget=full seed=5,6,7,8,9" &
    wait
    queue "variance/scratch_full/it900_a|budget=full train.iterations=900 seed=0,1,2,3,4" &
    queue "variance/scratch_full/it900_b|budget=full train.iterations=900 seed=5,6,7,8,9" &
    wait
fi
if [[ $PART == scratch_it900 || $PART == all ]]; then
    mkdir -p "$OUT/variance/scratch_it900"
    queue "variance/scratch_it900/random_a|strategy=random train.iterations=900 seed=0,1,2,3,4" \
          "variance/scratch_it900/margin_a|strategy=margin train.iterations=900 seed=0,1,2" \
          "variance/scratch_it900/margin_s34|strategy=margin train.iterations=900 seed=3,4" &
    queue "variance/scratch_it900/random_b|strategy=random train.iterations=900 seed=5,6,7,8,9" \
          "variance/scratch_it900/margin_b|strategy=margin train.iterations=900 seed=5,6,7" \
          "variance/scratch_it900/margin_s89|strategy=margin train.iterations=900 seed=8,9" &
    wait
fi
if [[ $PART == scratch_balanced || $PART == all ]]; then
    mkdir -p "$OUT/variance/scratch_balanced"
    queue "variance/scratch_balanced/random_a|strategy=random train.class_weights=median_frequency seed=0,1,2,3,4" \
          "variance/scratch_balanced/margin_a|strategy=margin train.class_weights=median_frequency seed=0,1,2,3,4" &
    queue "variance/scratch_balanced/random_b|strategy=random train.class_weights=median_frequency seed=5,6,7,8,9" \
          "variance/scratch_balanced/margin_b|strategy=margin train.class_weights=median_frequency seed=5,6,7,8,9" &
    wait
fi
if [[ $PART == scratch_frozen || $PART == all ]]; then
    mkdir -p "$OUT/variance/scratch_frozen"
    synthetic_encoder
    queue "variance/scratch_frozen/random_a|strategy=random $FROZEN seed=0,1,2,3,4" \
          "variance/scratch_frozen/margin_a|strategy=margin $FROZEN seed=0,1,2,3,4" \
          "variance/scratch_frozen/trained_a|strategy=random model.encoder_weights=$SYNTH seed=0,1,2,3,4" \
          "variance/scratch_frozen/full_a|budget=full $FROZEN seed=0,1,2,3,4" \
          "variance/scratch_frozen/b32_a|strategy=random $FROZEN train.batch_size=32 seed=0,1,2,3,4" \
          "variance/scratch_frozen/it900_a|strategy=random $FROZEN train.iterations=900 seed=0,1,2,3,4" &
    queue "variance/scratch_frozen/random_b|strategy=random $FROZEN seed=5,6,7,8,9" \
          "variance/scratch_frozen/margin_b|strategy=margin $FROZEN seed=5,6,7,8,9" \
          "variance/scratch_frozen/trained_b|strategy=random model.encoder_weights=$SYNTH seed=5,6,7,8,9" \
          "variance/scratch_frozen/full_b|budget=full $FROZEN seed=5,6,7,8,9" \
          "variance/scratch_frozen/b32_b|strategy=random $FROZEN train.batch_size=32 seed=5,6,7,8,9" \
          "variance/scratch_frozen/it900_b|strategy=random $FROZEN train.iterations=900 seed=5,6,7,8,9" &
    wait
fi
if [[ $PART == scratch_frozen_decomp || $PART == all ]]; then
    mkdir -p "$OUT/variance/scratch_frozen_decomp"
    synthetic_encoder
    FROZEN_RANDOM="strategy=random $FROZEN"
    queue "variance/scratch_frozen_decomp/train_a|$FROZEN_RANDOM seed=0 train.seed=0,1,2,3,4" \
          "variance/scratch_frozen_decomp/select_a|$FROZEN_RANDOM seed=1,2,3,4,5 train.seed=0" \
          "variance/scratch_frozen_decomp/px5_a|$FROZEN_RANDOM budget.initial=5 budget.per_cycle=5 seed=0,1,2,3,4" &
    queue "variance/scratch_frozen_decomp/train_b|$FROZEN_RANDOM seed=0 train.seed=5,6,7,8,9" \
          "variance/scratch_frozen_decomp/select_b|$FROZEN_RANDOM seed=6,7,8,9 train.seed=0" \
          "variance/scratch_frozen_decomp/px5_b|$FROZEN_RANDOM budget.initial=5 budget.per_cycle=5 seed=5,6,7,8,9" &
    wait
fi
COMMON+=(train.reinit=false)  # the fine-tuned protocol from here on
if [[ $PART == main || $PART == all ]]; then
    queue "power_margin|strategy=margin strategy.sampling=power seed=0,1,2" \
          "top5|strategy=margin strategy.top_percent=0.05 seed=0,1,2" \
          "full|budget=full seed=0" "full_long|budget=full train.iterations=2250 seed=0" \
          "random_s34|strategy=random seed=3,4" "margin_s34|strategy=margin seed=3,4" \
          "power_margin_s34|strategy=margin strategy.sampling=power seed=3,4" \
          "top5_s34|strategy=margin strategy.top_percent=0.05 seed=3,4" &
    queue "power_entropy|strategy=entropy strategy.sampling=power seed=0,1,2" \
          "entropy|strategy=entropy seed=0,1,2" "bald|strategy=bald seed=0,1,2" \
          "power_entropy_s34|strategy=entropy strategy.sampling=power seed=3,4" \
          "entropy_s34|strategy=entropy seed=3,4" "bald_s34|strategy=bald seed=3,4" &
    wait
fi
if [[ $PART == seeds || $PART == all ]]; then
    queue "random_s59|strategy=random seed=5,6,7,8,9" "top5_s59|strategy=margin strategy.top_percent=0.05 seed=5,6,7,8,9" \
          "bald_s56|strategy=bald seed=5,6" "entropy_s57|strategy=entropy seed=5,6,7" &
    queue "margin_s59|strategy=margin seed=5,6,7,8,9" \
          "power_margin_s59|strategy=margin strategy.sampling=power seed=5,6,7,8,9" "bald_s79|strategy=bald seed=7,8,9" \
          "entropy_s89|strategy=entropy seed=8,9" &
    wait
fi
if [[ $PART == variance || $PART == all ]]; then
    mkdir -p "$OUT/variance"
    queue "variance/lr2e-3|strategy=random train.lr=2e-3 seed=0,1,2" "variance/px5|strategy=random budget.initial=5 budget.per_cycle=5 seed=0,1,2,3,4" &
    queue "variance/lr1e-3|strategy=random train.lr=1e-3 seed=0,1,2" "variance/it900|strategy=random train.iterations=900 seed=0,1" &
    wait
    # a stronger encoder, two runs side by side (about 21 minutes each)
    queue "variance/r18|hydra/launcher=joblib hydra.launcher.n_jobs=2 strategy=random model.encoder=resnet18 seed=0,1"
    # more seeds where 3 looked steady, and a lower rate still
    queue "variance/lr1e-3_s37|strategy=random train.lr=1e-3 seed=3,4,5,6,7" &
    queue "variance/lr5e-4|strategy=random train.lr=5e-4 seed=0,1,2,3,4" &
    wait
    # mid-size encoders between the two (about 6 and 13 minutes per run, two side by side)
    queue "variance/regnet_a|strategy=random model.encoder=tu-regnetx_002 seed=0,2,4" \
          "variance/r10t_a|strategy=random model.encoder=tu-resnet10t seed=0,2,4" &
    queue "variance/regnet_b|strategy=random model.encoder=tu-regnetx_002 seed=1,3" \
          "variance/r10t_b|strategy=random model.encoder=tu-resnet10t seed=1,3" &
    wait
    # a larger working size, 90x120 (about 11 minutes per run, two side by side)
    queue "variance/size90_a|strategy=random dataset.size=[90,120] seed=0,1,2" &
    queue "variance/size90_b|strategy=random dataset.size=[90,120] seed=3,4" &
    wait
    # the encoder pretrained on synthetic scenes (benchmarks/pretrain_synthetic.py, about 7 minutes)
    $PYTHON benchmarks/pretrain_synthetic.py "$OUT/variance/synthetic_encoder.pt" > "$OUT/variance/synthetic_encoder.log"
    queue "variance/synth_a|strategy=random model.encoder_weights=$OUT/variance/synthetic_encoder.pt seed=0,2,4" &
    queue "variance/synth_b|strategy=random model.encoder_weights=$OUT/variance/synthetic_encoder.pt seed=1,3" &
    wait
    # larger batches: 32 (twice the images per run, about 11 minutes beside one other), 64 and 32
    # with half the steps (as many images as 32 and as shipped), and ResNet-18's seed 3
    queue "variance/b32_a|strategy=random train.batch_size=32 seed=0,2,4" \
          "variance/b64_a|strategy=random train.batch_size=64 train.iterations=225 seed=0,2,4" \
          "variance/b32i225_a|strategy=random train.batch_size=32 train.iterations=225 seed=0" &
    queue "variance/b32_b|strategy=random train.batch_size=32 seed=1,3" \
          "variance/r18_s3|strategy=random model.encoder=resnet18 seed=3" \
          "variance/b32i225_b|strategy=random train.batch_size=32 train.iterations=225 seed=1,3" &
    wait
    # batch 64 for all 450 steps (about 22 minutes beside one other; seeds 0-3), no dropout before
    # the head, more weight decay, PixelPick's scale range, and no dropout with batch 32
    queue "variance/b64i450_a|strategy=random train.batch_size=64 seed=0,2" \
          "variance/drop0_a|strategy=random model.dropout=0 seed=0,2,4" \
          "variance/wd1e-3_a|strategy=random train.weight_decay=1e-3 seed=0,2,4" \
          "variance/scale_a|strategy=random train.augment.scale=[0.5,2.0] seed=0,2,4" \
          "variance/drop0b32_a|strategy=random model.dropout=0 train.batch_size=32 seed=0,2,4" &
    queue "variance/b64i450_b|strategy=random train.batch_size=64 seed=1,3" \
          "variance/drop0_b|strategy=random model.dropout=0 seed=1,3" \
          "variance/wd1e-3_b|strategy=random train.weight_decay=1e-3 seed=1,3" \
          "variance/scale_b|strategy=random train.augment.scale=[0.5,2.0] seed=1,3" \
          "variance/drop0b32_b|strategy=random model.dropout=0 train.batch_size=32 seed=1,3" &
    wait
    # an ensemble of 5 networks (train.ensemble=5; 22-35 minutes per run beside one other):
    # random, then margin for the paired difference (OUT_DIR/ens5)
    mkdir -p "$OUT/ens5"
    queue "variance/ens5_a|strategy=random train.ensemble=5 seed=0,1,2" "ens5/margin_a|strategy=margin train.ensemble=5 seed=0" &
    queue "variance/ens5_b|strategy=random train.ensemble=5 seed=3,4" "ens5/margin_b|strategy=margin train.ensemble=5 seed=2,3" \
          "ens5/margin_b4|strategy=margin train.ensemble=5 seed=4" &
    wait
    queue "ens5/margin_a1|strategy=margin train.ensemble=5 seed=1"
    # seeds 5-9 of batch 32 (steadiest with 5 seeds), a cosine schedule (and its seeds 5-9), one
    # pixel per image per cycle, and seeds 2-4 of 900 steps
    queue "variance/b32_c|strategy=random train.batch_size=32 seed=5,7,9" \
          "variance/cos_a|strategy=random train.schedule=cosine seed=0,2,4" \
          "variance/px1_a|strategy=random budget.initial=1 budget.per_cycle=1 seed=0,2,4" \
          "variance/it900_c|strategy=random train.iterations=900 seed=3" \
          "variance/cos_d|strategy=random train.schedule=cosine seed=6,8" &
    queue "variance/b32_d|strategy=random train.batch_size=32 seed=6,8" \
          "variance/cos_b|strategy=random train.schedule=cosine seed=1,3" \
          "variance/px1_b|strategy=random budget.initial=1 budget.per_cycle=1 seed=1,3" \
          "variance/it900_b|strategy=random train.iterations=900 seed=2,4" \
          "variance/cos_c|strategy=random train.schedule=cosine seed=5,7,9" &
    wait
    # where the spread comes from (train.seed): the same labels (seed=0) with training seeds
    # 0-4, then training seed 0 with selection seeds 1-4
    mkdir -p "$OUT/variance/decomp"
    queue "variance/decomp/train0|strategy=random seed=0 train.seed=0" "variance/decomp/train2|strategy=random seed=0 train.seed=2" \
          "variance/decomp/train4|strategy=random seed=0 train.seed=4" &
    queue "variance/decomp/train1|strategy=random seed=0 train.seed=1" "variance/decomp/train3|strategy=random seed=0 train.seed=3" \
          "variance/decomp/select14|strategy=random seed=1,2,3,4 train.seed=0" &
    wait
fi
