# The demo's first stage (README command 1): a tiny ViT, fully trained (frozen=False, no
# prompts) on a 4-class task that tools/demo.py generates in the VTAB-1k format. Its
# checkpoint is the "pretrained" backbone of the prompt-tuning stage
# (cvpt_vit-tiny_synthetic.py). Runs with tools/train.py / tools/test.py like any config.
_base_ = ['mmpretrain::_base_/default_runtime.py']

default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvpt'], allow_failed_imports=False)

data_root = 'work_dirs/demo/data/synthetic'
num_classes = 4
img_size = 32

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmvpt.PromptedViT',
        arch='vit_base_patch16_224',
        # timm's default init (std 0.02) trains slowly at this width; 'jax' is xavier.
        arch_cfg=dict(patch_size=8, embed_dim=64, depth=4, num_heads=4, weight_init='jax'),
        img_size=img_size,
        frozen=False),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=num_classes,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss'),
        topk=(1, )))

data_preprocessor = dict(
    num_classes=num_classes,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size)),
    dict(type='PackInputs'),
]


def _loader(split, shuffle):
    return dict(
        batch_size=32,
        num_workers=0,
        dataset=dict(
            type='CustomDataset',
            data_root=data_root,
            ann_file=f'{split}.txt',
            data_prefix='',
            with_label=True,
            pipeline=pipeline),
        sampler=dict(type='DefaultSampler', shuffle=shuffle))


train_dataloader = _loader('train800', True)
val_dataloader = _loader('val200', False)
test_dataloader = _loader('test', False)
del _loader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, eta_min=1e-5)]
train_cfg = dict(by_epoch=True, max_epochs=6, val_interval=3)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='mmvpt.CheckpointHook', interval=3, max_keep_ckpts=1),
    data_check=dict(type='mmvpt.DataCheckHook'))
randomness = dict(seed=0, deterministic=False)
