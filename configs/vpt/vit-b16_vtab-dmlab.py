# VPT-deep on VTAB-1k dmlab (6 classes).
# 100 prompts, base lr 1 (x 64 / 256), wd 0.001, batch 64: VPT's own (KMnP/vpt demo.ipynb, "the same
# from our paper").
_base_ = ['../_base_/methods/vpt.py', '../_base_/datasets/vtab1k.py']

task = 'dmlab'
model = dict(backbone=dict(prompt=dict(num_tokens=100)), head=dict(num_classes=6))
data_preprocessor = dict(num_classes=6)
train_dataloader = dict(batch_size=64, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.25, weight_decay=0.001))
