#!/usr/bin/env bash
# Testing on a SLURM cluster, one task per GPU (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS
# from the environment).
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args, e.g. --tta]
exec bash "$(dirname "$0")/srun.sh" "$1" "$2" test.py "$3" "$4" "${@:5}"
