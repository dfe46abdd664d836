#!/usr/bin/env bash
# The GPU tables of README "Speed and memory", in one command that fits a short GPU lease
# (each part well inside 10 minutes on one H200):
#
#   bash tools/analysis/gpu_benchmark.sh eager     # ViT-B/16 bf16 batch 64, every prompt method
#                                                  # at P 10/50/200, the adapter-style rows;
#                                                  # ViT-L/16 512 batch 4; profiles
#   bash tools/analysis/gpu_benchmark.sh compiled  # the same ViT-B rows under torch.compile
#
# On the lent GPU machine (../shared/gpu/README.md): bash .gpu-kit/run.sh bash tools/analysis/gpu_benchmark.sh eager
# Output: the tables on stdout, and a copy in $OUT (or work_dirs/gpu_benchmark) per part
# (<part>.md); the progress lines and any error on stderr, copied to <part>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
part=${1:-eager}
out=${OUT:-work_dirs/gpu_benchmark}
mkdir -p "$out"
bench=(python tools/analysis/benchmark.py --device cuda --amp bf16)
case $part in
  eager)
    {
      # every row of every method (the default --methods)
      "${bench[@]}" --batch 64 --prompts 0,10,50,200 \
          --profile none:0 --profile vpt:200 --profile cvpt_sample:10 --profile e2vpt:50 --profile ivpt:50
      # the SETR shape: ViT-L/16 at 512, batch 4
      "${bench[@]}" --arch vit_large_patch16_384 --img-size 512 --batch 4 --prompts 0,200 \
          --methods none,linear,full,vpt,cvpt_sample --with-cp
    } 2> >(tee "$out/eager.log" >&2) | tee "$out/eager.md"
    ;;
  compiled)
    "${bench[@]}" --compile --batch 64 --prompts 0,10,200 \
        --methods none,linear,full,vpt,e2vpt,cvpt_sample,ivpt,lora,ssf \
        2> >(tee "$out/compiled.log" >&2) | tee "$out/compiled.md"
    ;;
  *)
    echo "usage: $0 eager|compiled" >&2
    exit 2
    ;;
esac
