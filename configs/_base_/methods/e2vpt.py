# E2VPT (Han et al., ICCV 2023): VPT's recipe (SGD, batch 64) for stage 1, then token and segment
# pruning and rewinding, and stage 2 with the same recipe (the schedule restarts), 100 + 100
# epochs: the one-run approximation (mmvpt.PromptPruningHook) of the authors' protocol.
# tools/protocol.py runs the protocol itself (E2VPT.protocol: the lr x wd grid, a training
# before pruning, importance scores, a rewind run per candidate mask, 5 seeds; each training
# 100 epochs, without this hook). Pruning fractions are searched 10%..90% there; here we chose
# 0.5 / 0.5 as defaults.
# Segments: 16 per prompt, each the dims d with d % 16 == r (the authors' code,
# CLS_TOKEN_P_PIECES_NUM and `repeat`); the paper says 8 (§4.1): num_segments=8,
# segment_layout='contiguous'.
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=dict(
    type='mmvpt.E2VPT', num_tokens=10, num_kv_tokens=5, dropout=0.1, num_segments=16,
    segment_layout='interleaved', prune_mode='remove')))
custom_hooks = [
    dict(type='mmvpt.ParameterReportHook'),
    dict(type='mmvpt.TunedCheckpointHook'),
    dict(type='mmvpt.PromptPruningHook', prune_after=100, token_fraction=0.5,
         segment_fraction=0.5, score='abs', scope='block', rewind='init'),
]
train_cfg = dict(max_epochs=200)
