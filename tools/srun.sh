#!/usr/bin/env bash
# Shared by slurm_train.sh and slurm_test.sh: runs tools/SCRIPT with srun, one task per GPU.
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] tools/srun.sh PARTITION JOB_NAME SCRIPT [args...]
DIR="$(cd "$(dirname "$0")" && pwd)"
# Before `set -x`: when no python can run the tools, its one line is all that is printed.
source "$DIR/find_python.sh"  # PYTHON: $PYTHON / python if it has torch, else mmvpt's environment
set -x
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}

PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$DIR/$SCRIPT" "${@:4}" --launcher slurm
