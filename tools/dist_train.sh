#!/usr/bin/env bash
# Distributed training with torchrun, one process per GPU (or, on a machine without GPUs,
# per CPU process through gloo).
#   tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT, e.g. on each of 2 nodes
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [train.py args...]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/torchrun.sh" "$2" train.py "$1" "${@:3}"
