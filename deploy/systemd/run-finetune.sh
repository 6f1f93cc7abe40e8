#!/bin/sh
# The scheduled fine-tune: one night of a device's life, as `edge-sel night` does it. It resumes the
# latest run if it was cut off (power loss, a stop, a kill after its last epoch but before its
# summary; a run that can no longer be resumed is kept as RUN.abandoned); otherwise it starts a new
# run directory named by the UTC start time, from the deployed model when there is one (else the
# warmup checkpoint). A finished run then replaces the deployed model only if it beats the deployed
# model itself on the run's local validation data (edge-sel promote).
# Every setting comes from the environment (edge-sel-finetune.service reads
# /etc/edge-sel/finetune.env; see finetune.env.example). edge-sel night reads EDGE_SEL_HOME,
# EDGE_SEL_RUNS, EDGE_SEL_DEPLOYED, EDGE_SEL_CHECKPOINT (the warmup), EDGE_SEL_DATASET,
# EDGE_SEL_EPOCHS and EDGE_SEL_PROFILE itself; this script adds EDGE_SEL_EXTRA_ARGS and EDGE_SEL_BIN.
#
# Exit status (edge-sel night's): 0 the night's work is done (promoted, or judged and not promoted);
# 130/143 the fine-tune was stopped by SIGINT/SIGTERM and checkpointed (the next start resumes it);
# 2 bad settings or input; 1 anything else. stdout is the journal: one line per step, epoch and phase.
set -eu

# EDGE_SEL_EXTRA_ARGS is split on spaces on purpose: extra finetune options, e.g. "--strategy dihcl".
# Without globbing: a value such as "[8,16]" or "*" would otherwise be replaced by the names of
# files in the working directory that it happens to match.
set -f
# shellcheck disable=SC2086
exec "${EDGE_SEL_BIN:-edge-sel}" night ${EDGE_SEL_EXTRA_ARGS:-}
