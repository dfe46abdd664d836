# CVPT with 200 prompts (45.66 / 47.92 SS / MS mIoU in the paper). The cross-attention shares
# the frozen self-attention weights; the authors' segmentation code left it random (a bug).
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.CVPT', num_tokens=200, insert='after_attn',
                                       dropout=0.1, ca_init='shared', ca_trainable=False)))
custom_hooks = [
    dict(type='mmvpt.ParameterReportHook'),
    dict(type='mmvpt.TunedCheckpointHook'),
    dict(type='mmvpt.CrossAttentionInitHook'),
]
