# Linear probing: the frozen backbone without prompts, only the head trains (VPT's recipe;
# base lr 2.5 and wd 1e-4 are our defaults, tools/protocol.py searches VPT's grid).
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=None, frozen=True))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
