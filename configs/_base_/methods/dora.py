# DoRA (Liu et al., ICML 2024): LoRA's update with the frozen weight decomposed into a learned
# per-row magnitude and a direction, rank 8 on the query and value rows of every block's qkv,
# scale alpha / r = 1; the magnitudes start at the frozen weights' row norms (tools/train.py
# and tools/test.py add mmvpt.FrozenInitHook, which derives them from a backbone that arrives
# by load_from and keeps those a checkpoint brings).
# Recipe: no source gives a DoRA recipe for VTAB-1k or FGVC: LoRA's (NOAH's VTAB-1k LoRA
# baseline) as our default: AdamW, lr 1e-3, wd 1e-4, batch 64, 100 epochs with 10 warm-up,
# drop-path 0.1.
# tools/protocol.py runs our AdamW lr x wd grid on train -> val, then 5 seeds (the method's
# protocol).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.DoRA', rank=8, alpha=8, targets=('q', 'v'))))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
