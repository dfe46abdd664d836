# VPT-deep on VTAB-1k sun397 (397 classes).
# 5 prompts, base lr 25 (x 128 / 256), wd 0.0001, batch 128: VPT's own (KMnP/vpt demo.ipynb, "the
# same from our paper").
_base_ = ['../_base_/methods/vpt.py', '../_base_/datasets/vtab1k.py']

task = 'sun397'
model = dict(backbone=dict(prompt=dict(num_tokens=5)), head=dict(num_classes=397))
data_preprocessor = dict(num_classes=397)
train_dataloader = dict(batch_size=128, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=12.5, weight_decay=0.0001))
