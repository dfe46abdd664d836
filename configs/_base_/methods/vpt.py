# VPT-deep (Jia et al. 2022). VPT searches lr in {50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05}
# x batch / 256 and wd in {0.01, 1e-3, 1e-4, 0} for each prompt length in {1, 5, 10, 50, 100,
# 200}, per task (tools/protocol.py does that: VPT.protocol); as the defaults we chose base lr
# 2.5 (0.625 at batch 64), wd 1e-4, and 10 prompts, except where the authors published a task's
# values (the per-task configs say so).
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.VPT', num_tokens=10, deep=True, dropout=0.1)))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
