# AdaptFormer (Chen et al. 2022): a 64-wide bottleneck beside every MLP, scale 0.1,
# dropout 0.1 (the authors' code).
# Recipe: ours (CVPT's schedule: AdamW, 10 warm-up + 90 cosine epochs, drop-path 0.1; lr 1e-3,
# wd 1e-4, batch 64, NOAH's VTAB-1k values for LoRA / Adapter). The authors' code
# (ShoufaChen/AdaptFormer, README.md and main_image.py) has only a full-dataset image recipe
# (CIFAR-100, SVHN, Flowers102, Food-101 from MAE weights: SGD momentum 0.9, blr 0.1 x batch /
# 256 at batch 128 x 8 GPUs, wd 0, 100 epochs, 20 warm-up, drop-path 0, a BatchNorm before the
# head), no VTAB-1k or FGVC one; the bottleneck 64, scale 0.1, dropout 0.1 and zero-initialised
# up-projection are its models/custom_modules.py and models/adapter.py.
# tools/protocol.py searches lr x wd: pass --lrs with AdamW-sized rates (its default grid is
# VPT's, for SGD).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.AdaptFormer', bottleneck=64, scale=0.1, dropout=0.1)))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
