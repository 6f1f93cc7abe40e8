#!/usr/bin/env bash
# The transfer protocol of docs/transfer.md on one GPU, start to finish within TOTAL_S (540 s), on a
# machine that reaches nothing outside itself and receives only the checkout and gpu-carry/ (built
# here by benchmarks/gpu_prepare.sh):
#   1. Lite0's logits against the efficientnet-lite-pytorch package's model and timm's (which imports
#      there), benchmarks/lite_equality.py and tests/test_efficientnet_lite.py;
#   2. two ImageNet warmups of EfficientNet-Lite0 on CIFAR-10's shard 0/2 at once, two recipes at
#      128 px (and one at 96 px beside the benches);
#   3. bench transfer from the 128 px warmup with the better validation accuracy, on shard 1/2, clean
#      and under Gaussian noise, 5 paired seeds: each seed of each condition a process of its own,
#      all at once (a batch of 32 leaves most of the GPU idle), merged by benchmarks/merge_bench_transfer.py.
#
#   OUT=$OUT bash benchmarks/gpu_transfer.sh     on the GPU machine, from the checkout's root
#   SMOKE=1 bash benchmarks/gpu_transfer.sh      the same stages on a CPU, tiny: a few minutes
#
#   CHOSEN=WORK/warm128-a WORK=... bash benchmarks/gpu_transfer.sh          the benches only, from that warmup
#   ALONE=1 CHOSEN=WORK/warm128-a WORK=... bash benchmarks/gpu_transfer.sh  one clean bench alone on the card:
#                                                                      each method's NVML joules its own
#   PLAN=1 bash benchmarks/gpu_transfer.sh       from ImageNet (no warmup, no equality stage): full FT, the
#                                                fixed sets (statistics frozen), the classifier re-estimating
#                                                them, the planner at 1/4, 1/10, 1/30 and the best fixed set
#                                                under each budget; SEEDS processes at once, clean, at SIZE px
#                                                (PLAN_METHODS=a,b,... other methods; BENCH_EPOCHS=N other epochs)
#
# Writes into $OUT (else runs/gpu-transfer) at most 8 files: run.log, lite-equality.txt,
# warmups.json, clean-table.md, clean-results.json, noise-table.md, noise-results.json, stages.txt
# (ALONE=1: run.log, alone-table.md, alone-results.json, stages.txt; PLAN=1: run.log, plan-table.md,
# plan-results.json, stages.txt).
# Every stage runs under its own time limit; the benches write their results after every run, so a
# bench stopped by its limit keeps the runs it finished. Measured on an H200: the warmups took about
# 110 s, each bench process 270 s (clean) to 430 s (noise); leave the call 50 s beyond TOTAL_S for
# the merges. One call of TOTAL_S=540 fits the warmups and the clean benches, not the noise benches
# after them: those are stopped at what is left, and marked partial; CHOSEN= runs the benches whole in
# a second call (give both calls the same WORK). A stage stopped by its limit or ended by a signal is
# partial: its line in run.log and stages.txt says so, a merged table with such a bench starts with
# PARTIAL, and the script ends with a PARTIAL line and exit 3 (0: every stage finished).
# NVML reads the whole card: runs that share it (the two warmups, the ten benches) record how many
# processes shared it and their joules are not any run's own.
set -u -m
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu-transfer transfer 540
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu; PACK=${PACK:-$WORK/smoke.pack}
    WARM=(--subset 100 --val-subset 20 --test-subset 50 --epochs 1 --anchors-per-class 2 --fisher-samples 20
          --precision fp32 --memory-format contiguous --eval-batch-size 50)
    SIZE=32; SIZE_SMALL=24
    BENCH=(--subset 60 --test-subset 30 --val-subset 10 --epochs 1)
    SEEDS=2
    LIMIT_INSTALL=${LIMIT_INSTALL:-5}; LIMIT_EQUALITY=${LIMIT_EQUALITY:-120}; LIMIT_DATA=${LIMIT_DATA:-60}
    LIMIT_WARM=${LIMIT_WARM:-240}; LIMIT_BENCH=${LIMIT_BENCH:-900}
    [ -f "$PACK" ] || "$PY" benchmarks/gpu_reference.py smoke-pack "$PACK" >>"$LOG" 2>&1
else
    # An H100 or H200: the whole shard 0/2 (22,500 training images, 2,500 for validation), batch 128,
    # bf16 and channels-last given (no probes), every test image.
    DEVICE=cuda; PACK=${PACK:-$CARRY/cifar10.pack}
    WARM=(--epochs ${WARM_EPOCHS:-6} --batch-size 128 --val-subset 1000 --precision bf16 --memory-format channels_last
          --eval-batch-size 500)
    SIZE=128; SIZE_SMALL=96
    BENCH=(--subset 2000 --test-subset 1000 --epochs ${BENCH_EPOCHS:-3})
    SEEDS=5
    LIMIT_INSTALL=${LIMIT_INSTALL:-60}; LIMIT_EQUALITY=${LIMIT_EQUALITY:-60}; LIMIT_DATA=${LIMIT_DATA:-60}
    # Measured on an H200: the warmups about 110 s, a bench process 270 s (clean) to 430 s (noise).
    LIMIT_WARM=${LIMIT_WARM:-180}; LIMIT_BENCH=${LIMIT_BENCH:-480}
fi
# The two recipes at 128 px: everything trained from the start with a fresh head (train-mode
# BatchNorm from the first step), and the head first on features normalised with the data's own
# statistics, then everything. The 96 px warmup takes the first.
RECIPE_A=(--optimizer sgd --lr 0.03 --warmup-epochs 0.5 --label-smoothing 0.1 --weight-decay 5e-5)
RECIPE_B=(--optimizer sgd --lr 0.03 --warmup-epochs 0.5 --label-smoothing 0.1 --weight-decay 5e-5
          --head-epochs 1 --head-lr 0.1 --head-bn-adapt 2000 --backbone-lr-scale 0.5)

limited() {   # limited LIMIT_S NAME COMMAND...: timed, its output in WORK/NAME.log, whose last lines run.log shows
    local limit=$1 name=$2 rc; shift 2
    timed "$name" "$limit" "$WORK/$name.log" "$@"
    rc=$?
    [ -f "$WORK/$name.log" ] && tail -n 3 "$WORK/$name.log" | sed "s/^/   $name | /" >>"$LOG"
    return $rc
}

mark_partial() {   # mark_partial CONDITION: a merged table of benches that did not all finish says so first
    local stopped table=$OUT/$1-table.md
    stopped=$(partial_stages | grep "^bench-$1-" | tr '\n' ' ')
    [ -n "$stopped" ] && [ -f "$table" ] || return 0
    { echo "**PARTIAL**: ${stopped% } did not finish (stopped by a time limit or a signal); the rows below are"
      echo "the runs they completed, not the bench's whole result."
      echo; cat "$table"; } >"$table.tmp" && mv "$table.tmp" "$table"
}

install() {
    [ "$SMOKE" = 1 ] && { echo "smoke: nothing installed"; return 0; }
    # What the image lacks (GPU_WHEELS: psutil, tqdm and pytest too, which edge_sel and the equality
    # test import), from the carry folder; edge-sel runs from the checkout (PYTHONPATH).
    install_wheels
}

equality() {
    "$PY" benchmarks/lite_equality.py --repeats 3 && "$PY" -m pytest -q -p no:cacheprovider tests/test_efficientnet_lite.py
}

pretrain() {   # pretrain NAME SIZE RECIPE...: an ImageNet warmup of Lite0 on shard 0/2
    local name=$1 size=$2; shift 2
    "$PY" -m edge_sel pretrain --model efficientnet_lite0 --pretrained imagenet --dataset "pack:$PACK" --shard 0/2 \
        --image-size "$size" --device "$DEVICE" "${WARM[@]}" "$@" --out "$WORK/$name" --overwrite --quiet
}

bench() {   # bench CONDITION SEED: one seed of bench transfer from the chosen warmup
    EDGE_SEL_THREADS=1 OMP_NUM_THREADS=1 "$PY" -m edge_sel bench transfer --checkpoint "$CHOSEN" --dataset "pack:$PACK" \
        --scenario "$1" --first-seed "$2" --seeds 1 --device "$DEVICE" --one-process "${BENCH[@]}" \
        --out "$WORK/bench-$1-$2" --overwrite --quiet
}

plan_bench() {   # plan_bench SEED: one seed of bench transfer from ImageNet, the planner's rows and what they meet
    EDGE_SEL_THREADS=1 OMP_NUM_THREADS=1 "$PY" -m edge_sel bench transfer --from-imagenet efficientnet_lite0 \
        --image-size "$SIZE" --dataset "pack:$PACK" --scenario clean --first-seed "$1" --seeds 1 --device "$DEVICE" \
        --methods "$PLAN_METHODS" "${BENCH[@]}" --out "$WORK/bench-plan-$1" --overwrite --quiet
}
PLAN_METHODS=${PLAN_METHODS:-classifier,bn+classifier,bias+bn+classifier,last-k,lite-residual,sparse,classifier/reestimate,planner@1/4,planner@1/10,planner@1/30}

log "edge-sel transfer on $DEVICE: $( [ "$SMOKE" = 1 ] && echo smoke || echo full ) run, pack $PACK, out $OUT, scratch $WORK"
[ "${ALONE:-0}" = 1 ] || log "NVML reads the whole card: the warmups run two at once and the benches ten at once, so their records say the meter was shared (energy_shared_with) and their joules are not any run's own; ALONE=1 runs one bench alone on the card for per-method joules"
limited "$LIMIT_INSTALL" install install || { log "install failed"; cat "$WORK/install.log" >>"$LOG"; exit 1; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"
if [ "${PLAN:-0}" != 1 ]; then
    limited "$LIMIT_EQUALITY" equality equality
    cp "$WORK/equality.log" "$OUT/lite-equality.txt"
    limited "$LIMIT_DATA" data "$PY" benchmarks/gpu_reference.py data "$PACK"
fi
pids=()

if [ "${PLAN:-0}" = 1 ]; then
    # From ImageNet (no warmup): full FT, the fixed sets with statistics frozen, AdaBN, the classifier
    # with statistics per condition, and the planner at 1/4, 1/10, 1/30 with the best fixed set that fits
    # each budget run under it; SEEDS processes at once, clean (the field's protocol) at SIZE px.
    log "from ImageNet at $SIZE px: the planner's budgets beside the fixed sets, $SEEDS seeds at once"
    for ((seed = 0; seed < SEEDS; seed++)); do
        limited "$LIMIT_BENCH" "bench-plan-$seed" plan_bench "$seed" &
        pids+=($!)
    done
    wait "${pids[@]}"
    "$PY" benchmarks/merge_bench_transfer.py --out "$WORK/merged-plan" "$WORK"/bench-plan-*/ >>"$LOG" 2>&1 \
        && cp "$WORK/merged-plan/table.md" "$OUT/plan-table.md" \
        && cp "$WORK/merged-plan/results.json" "$OUT/plan-results.json"
    mark_partial plan
    grep "^== " "$LOG" >"$OUT/stages.txt"
    finish
fi

if [ "${ALONE:-0}" = 1 ]; then
    # One seed of the clean bench with nothing else on the card: every method's NVML joules its own
    # (its records say energy_shared_with 0 where NVML saw no other process), from a given warmup.
    [ -f "${CHOSEN:-}/model.json" ] || { log "ALONE=1 needs CHOSEN=a finished warmup (from an earlier run's WORK)"; exit 2; }
    log "one bench alone on the card from $CHOSEN: nothing else runs beside it"
    limited "$LIMIT_BENCH" bench-alone-0 bench clean 0
    "$PY" benchmarks/merge_bench_transfer.py --out "$WORK/merged-alone" "$WORK"/bench-alone-0/ >>"$LOG" 2>&1 \
        && cp "$WORK/merged-alone/table.md" "$OUT/alone-table.md" \
        && cp "$WORK/merged-alone/results.json" "$OUT/alone-results.json"
    mark_partial alone
    grep "^== " "$LOG" >"$OUT/stages.txt"
    finish
fi

if [ -z "${CHOSEN:-}" ]; then
    # The two 128 px warmups at once, each under the same limit; the 96 px one runs beside the benches.
    limited "$LIMIT_WARM" warm128-a pretrain warm128-a "$SIZE" "${RECIPE_A[@]}" &
    pid_a=$!
    limited "$LIMIT_WARM" warm128-b pretrain warm128-b "$SIZE" "${RECIPE_B[@]}" &
    wait "$pid_a" $!
    "$PY" benchmarks/gpu_transfer.py warmups "$WORK" "$OUT/warmups.json" 2>&1 | tee -a "$LOG"
    CHOSEN=$("$PY" benchmarks/gpu_transfer.py pick "$WORK" warm128- 2>>"$LOG") || { log "no 128 px warmup finished: no bench"; exit 1; }
    limited "$LIMIT_BENCH" warm96-a pretrain warm96-a "$SIZE_SMALL" "${RECIPE_A[@]}" &
    pids=($!)
else
    log "CHOSEN given: no warmups, the benches start at once"
    pids=()
fi
log "benches start from $CHOSEN"
if [ "$(seconds_left)" -lt "$LIMIT_BENCH" ]; then
    log "the benches need up to $LIMIT_BENCH s (the noise ones took about 430 s on an H200), $(seconds_left) s are left: those still running then are stopped and marked partial; for the whole bench run it in a call of its own with CHOSEN=$CHOSEN and the same WORK"
fi
for condition in clean noise; do
    for ((seed = 0; seed < SEEDS; seed++)); do
        limited "$LIMIT_BENCH" "bench-$condition-$seed" bench "$condition" "$seed" &
        pids+=($!)
    done
done
wait "${pids[@]}"
for condition in clean noise; do
    "$PY" benchmarks/merge_bench_transfer.py --out "$WORK/merged-$condition" "$WORK"/bench-"$condition"-*/ >>"$LOG" 2>&1 \
        && cp "$WORK/merged-$condition/table.md" "$OUT/$condition-table.md" \
        && cp "$WORK/merged-$condition/results.json" "$OUT/$condition-results.json"
    mark_partial "$condition"
done
"$PY" benchmarks/gpu_transfer.py warmups "$WORK" "$OUT/warmups.json" >>"$LOG" 2>&1
grep "^== " "$LOG" >"$OUT/stages.txt"
finish
