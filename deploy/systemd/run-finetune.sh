#!/bin/sh
# The scheduled fine-tune: one run directory per start, named by the UTC start time.
# Every setting comes from the environment (edge-sel-finetune.service reads
# /etc/edge-sel/finetune.env; see finetune.env.example).
set -eu

home="${EDGE_SEL_HOME:-/var/lib/edge-sel}"
runs="${EDGE_SEL_RUNS:-$home/runs}"
run="$runs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$runs"

# EDGE_SEL_EXTRA_ARGS is split on spaces on purpose: extra finetune options, e.g. "--strategy dihcl".
# shellcheck disable=SC2086
exec "${EDGE_SEL_BIN:-edge-sel}" finetune \
    --checkpoint "${EDGE_SEL_CHECKPOINT:-$home/checkpoints/warmup}" \
    --dataset "${EDGE_SEL_DATASET:-folder:$home/data}" \
    --epochs "${EDGE_SEL_EPOCHS:-5}" \
    --profile "${EDGE_SEL_PROFILE:-auto}" \
    --out "$run" --quiet ${EDGE_SEL_EXTRA_ARGS:-}
