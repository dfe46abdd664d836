#!/usr/bin/env bash
# Distributed testing with torchrun.
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args, e.g. --tta]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT as in dist_train.sh.
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/torchrun.sh" "$3" test.py "$1" "$2" "${@:4}"
