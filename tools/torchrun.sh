#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: runs tools/SCRIPT with torchrun, NPROC processes
# per node, with NNODES / NODE_RANK / MASTER_ADDR / PORT from the environment.
#   tools/torchrun.sh NPROC SCRIPT [args...]
set -e
NPROC=$1
SCRIPT=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "$0")" && pwd)"
source "$DIR/find_python.sh"  # PYTHON: $PYTHON / python if it has torch, else mmvpt's environment

# _torchrun.py is torchrun whose output ends with a worker's user error, once (see there).
PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" "$DIR/_torchrun.py" \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$DIR/$SCRIPT" "${@:3}" --launcher pytorch
