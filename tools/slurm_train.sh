#!/usr/bin/env bash
# Training on a SLURM cluster, one task per GPU (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS
# from the environment).
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]
WORK_DIR_ARG=()
[ -n "${4:-}" ] && WORK_DIR_ARG=(--work-dir "$4")
exec bash "$(dirname "$0")/srun.sh" "$1" "$2" train.py "$3" "${WORK_DIR_ARG[@]}" "${@:5}"
