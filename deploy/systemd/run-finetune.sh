#!/bin/sh
# The scheduled fine-tune: one night of a device's life. Resumes the latest run if it was cut off
# (power loss, a stop, a kill after its last epoch but before its summary); otherwise starts a new
# run directory named by the UTC start time, from the deployed model when there is one (else the
# warmup checkpoint). A finished run then replaces the deployed model only if it beats the deployed
# model itself on the run's local validation data (edge-sel promote).
# Every setting comes from the environment (edge-sel-finetune.service reads
# /etc/edge-sel/finetune.env; see finetune.env.example).
#
# Exit status: 0 the night's work is done (promoted or, exit 3 of promote, judged and not promoted);
# 130/143 the fine-tune was stopped by SIGINT/SIGTERM and checkpointed (the next start resumes it);
# 2 bad settings or input; 1 anything else. stdout is the journal: one line per epoch and phase.
set -eu

home="${EDGE_SEL_HOME:-/var/lib/edge-sel}"
runs="${EDGE_SEL_RUNS:-$home/runs}"
deployed="${EDGE_SEL_DEPLOYED:-$home/checkpoints/deployed}"
bin="${EDGE_SEL_BIN:-edge-sel}"
not_promoted=3
mkdir -p "$runs"

unfinished() {
    # A run with a full-state checkpoint and no summary, or one whose summary says it was interrupted.
    [ -d "$1/state" ] || return 1
    [ ! -f "$1/summary.json" ] || grep -q '"stop_reason": "interrupted"' "$1/summary.json"
}

latest="$(find "$runs" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*T[0-9]*Z' | sort | tail -n 1)"
run=""
if [ -n "$latest" ] && unfinished "$latest"; then
    echo "edge-sel nightly: resuming $latest"
    status=0
    "$bin" finetune --resume "$latest" || status=$?
    if [ "$status" -eq 2 ]; then
        # A run that can no longer be resumed (refused as bad input, e.g. its start checkpoint
        # changed) would fail the same way every night: set it aside, kept, and start a new run.
        mv "$latest" "$latest.abandoned"
        echo "edge-sel nightly: $latest cannot be resumed; kept as $latest.abandoned, starting a new run"
    elif [ "$status" -ne 0 ]; then
        exit "$status"
    else
        run="$latest"
    fi
fi
if [ -z "$run" ]; then
    run="$runs/$(date -u +%Y%m%dT%H%M%SZ)"
    start="${EDGE_SEL_CHECKPOINT:-$home/checkpoints/warmup}"
    if [ -z "${EDGE_SEL_CHECKPOINT:-}" ] && [ -f "$deployed/model.safetensors" ]; then
        start="$deployed"
    fi
    echo "edge-sel nightly: new run $run from $start"
    # EDGE_SEL_EXTRA_ARGS is split on spaces on purpose: extra finetune options, e.g. "--strategy dihcl".
    # shellcheck disable=SC2086
    "$bin" finetune \
        --checkpoint "$start" \
        --dataset "${EDGE_SEL_DATASET:-folder:$home/data}" \
        --epochs "${EDGE_SEL_EPOCHS:-5}" \
        --profile "${EDGE_SEL_PROFILE:-auto}" \
        --out "$run" ${EDGE_SEL_EXTRA_ARGS:-}
fi
# Only a finished run is judged; an energy-budget stop counts as finished.
if [ -f "$run/summary.json" ] && ! grep -q '"stop_reason": "interrupted"' "$run/summary.json"; then
    status=0
    "$bin" promote "$run" --deployed "$deployed" || status=$?
    if [ "$status" -ne 0 ] && [ "$status" -ne "$not_promoted" ]; then
        exit "$status"
    fi
fi
