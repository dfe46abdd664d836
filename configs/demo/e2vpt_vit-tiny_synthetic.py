# The demo's third stage: E2VPT on the same frozen backbone, with token + segment pruning
# after 5 epochs, rewinding, and 5 more epochs (the schedule restarts).
_base_ = ['./cvpt_vit-tiny_synthetic.py']

model = dict(
    backbone=dict(
        prompt=dict(_delete_=True, type='mmvpt.E2VPT', num_tokens=8, num_kv_tokens=4,
                    num_segments=4)))
custom_hooks = [
    dict(type='mmvpt.ParameterReportHook'),
    dict(type='mmvpt.TunedCheckpointHook'),
    dict(type='mmvpt.PromptPruningHook', prune_after=5, token_fraction=0.5,
         segment_fraction=0.5),
]
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=5, eta_min=1e-5)]
