# VTAB-1k, folder + list-file format: data/vtab-1k/<task>/{train800,val200,train800val200,test}.txt
# Default splits are the final protocol run: train on train800val200, test on test (val200
# is watched during training only). tools/protocol.py runs the lr x wd search on
# train800 -> val200 first. Resize straight to 224x224 (bicubic), no augmentation.
dataset_type = 'mmvpt.VTAB1k'
data_root = 'data/vtab-1k'
data_preprocessor = dict(
    num_classes=100,
    # ImageNet mean/std; NOAH used 0.5 / 0.5 (set mean=[127.5] * 3, std=[127.5] * 3).
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(224, 224), interpolation='bicubic'),
    dict(type='PackInputs'),
]
test_pipeline = train_pipeline

train_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, task='cifar', split='train800val200',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, task='cifar', split='val200',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, task='cifar', split='test',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
