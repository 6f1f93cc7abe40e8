#!/bin/sh
# Starts this device's Flower SuperNode with the settings of /etc/edge-sel/supernode.env.
set -eu
: "${EDGE_SEL_SUPERLINK:?set EDGE_SEL_SUPERLINK=host:port in /etc/edge-sel/supernode.env}"
HOME_DIR="${EDGE_SEL_HOME:-/var/lib/edge-sel}"
BIN_DIR="${EDGE_SEL_BIN_DIR:-/opt/edge-sel/venv/bin}"
# flower-supernode starts flower-superexec and flwr-clientapp by name: they must be on PATH.
PATH="$BIN_DIR:$PATH"
export PATH FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME="$HOME_DIR/flwr"
NODE_CONFIG="dataset='${EDGE_SEL_DATASET:-folder:$HOME_DIR/data}' profile='${EDGE_SEL_PROFILE:-auto}' work-dir='$HOME_DIR/fleet'"
if [ -n "${EDGE_SEL_NODE_CONFIG:-}" ]; then
    NODE_CONFIG="$NODE_CONFIG $EDGE_SEL_NODE_CONFIG"
fi
set -- --superlink "$EDGE_SEL_SUPERLINK" --node-config "$NODE_CONFIG" --host 127.0.0.1 --port "${EDGE_SEL_RUNTIME_PORT:-9094}"
if [ -n "${EDGE_SEL_ROOT_CERTIFICATES:-}" ]; then
    set -- "$@" --root-certificates "$EDGE_SEL_ROOT_CERTIFICATES"
else
    set -- "$@" --insecure
fi
if [ -n "${EDGE_SEL_NODE_KEY:-}" ]; then
    set -- "$@" --auth-supernode-private-key "$EDGE_SEL_NODE_KEY"
fi
exec "$BIN_DIR/flower-supernode" "$@"
