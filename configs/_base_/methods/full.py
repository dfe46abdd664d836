# Full fine-tuning: nothing frozen, no prompts. VPT's recipe with lr 1e-3 at batch 64 and wd
# 1e-4 as our defaults; checkpoints are full (everything is tuned).
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=None, frozen=False))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook')]
