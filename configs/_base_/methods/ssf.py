# SSF (Lian et al. 2022): a scale and shift after every operation of the frozen model.
# Recipe: the authors' per-task train scripts (dongzelian/SSF,
# train_scripts/vit/{vtab,fgvc}/<task>/train_ssf.sh) give lr, wd and drop-path per task, written
# in the generated configs (tools/misc/generate_configs.py, SSF_VTAB / SSF_FGVC), and AdamW,
# 100 epochs with 10 warm-up, batch 32 on each of 2 GPUs (64 here), no mixup, cutmix or label
# smoothing, as here. Ours, where we differ: the cosine ends at 1e-5 (theirs 1e-8) and warms up
# from lr x 1e-3 (theirs from 1e-7); their FGVC runs add model EMA and timm's simple
# augmentation, which we do not. The lr / wd / drop-path below are our defaults for configs
# outside those tables.
# tools/protocol.py searches lr x wd: pass --lrs with AdamW-sized rates (its default grid is
# VPT's, for SGD).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.SSF')))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
