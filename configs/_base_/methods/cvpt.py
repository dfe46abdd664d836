# CVPT (ICCV 2025): AdamW wd 0.05, batch 32, 10 warm-up + cosine to 1e-5, 100 epochs,
# drop-path 0.1 on the frozen blocks, prompt dropout 0.1, cross-attention weight-shared with
# the frozen self-attention, inserted after the self-attention (the paper's position 3).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.CVPT', num_tokens=10, insert='after_attn', dropout=0.1,
                ca_init='shared', ca_trainable=False)))
# (tools/train.py and tools/test.py add mmvpt.FrozenInitHook: with ca_trainable=True the
# cross-attention copies are derived from the frozen weights)
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
