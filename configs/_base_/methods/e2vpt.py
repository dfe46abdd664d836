# E2VPT (Han et al., ICCV 2023): VPT's recipe (SGD, batch 64) for stage 1, then token and segment pruning
# and rewinding, and stage 2 with the same recipe (the schedule restarts), 100 + 100 epochs.
# Pruning fractions are searched 10%..90% in the paper; we chose 0.5 / 0.5 as defaults.
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=dict(
    type='mmvpt.E2VPT', num_tokens=10, num_kv_tokens=5, dropout=0.1, num_segments=8,
    segment_layout='contiguous', prune_mode='remove')))
custom_hooks = [
    dict(type='mmvpt.ParameterReportHook'),
    dict(type='mmvpt.TunedCheckpointHook'),
    dict(type='mmvpt.PromptPruningHook', prune_after=100, token_fraction=0.5,
         segment_fraction=0.5, score='abs', scope='block', rewind='init'),
]
train_cfg = dict(max_epochs=200)
