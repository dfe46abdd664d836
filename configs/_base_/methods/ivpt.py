# iVPT (Zhou, Chen and Huang): SGD, 10 warm-up + 90 cosine epochs, random crop + flip at 224 for
# training. The paper lists no lr / wd / batch: we chose VPT's defaults (base lr 2.5, wd
# 1e-4, batch 64) and, where it names none, VPT-deep's prompt dropout 0.1.
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=dict(
    type='mmvpt.IVPT', num_tokens=10, num_ar_tokens=10, dynamic_aggregation=True, dropout=0.1)))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
ivpt_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), interpolation='bicubic'),
    dict(type='RandomCrop', crop_size=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
ivpt_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
