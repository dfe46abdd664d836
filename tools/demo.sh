#!/usr/bin/env bash
# README command 1: builds the environment if it is missing, then runs the demo: a small
# generated dataset, a small ViT, train + test on CPU in well under a minute (the full log in
# work_dirs/demo/demo.log).
#   bash tools/demo.sh [demo.py args...]
set -e
cd "$(dirname "$0")/.."
source tools/env.sh
exec python tools/demo.py "$@"
