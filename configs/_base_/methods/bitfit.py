# BitFit (Ben Zaken et al. 2022), the tables' "Bias" row: every bias of the frozen model.
# Recipe: ours (CVPT's schedule: AdamW, 10 warm-up + 90 cosine epochs, drop-path 0.1; lr 1e-3,
# wd 1e-4, batch 64, NOAH's VTAB-1k values for LoRA / Adapter): no public source read gives a
# BitFit recipe for VTAB-1k or FGVC.
# tools/protocol.py searches lr x wd: pass --lrs with AdamW-sized rates (its default grid is
# VPT's, for SGD).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.BitFit')))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
