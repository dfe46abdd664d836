# CVPT on VTAB-1k patch_camelyon (2 classes).
# 1 prompts, lr 0.01 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'patch_camelyon'
model = dict(backbone=dict(prompt=dict(num_tokens=1)), head=dict(num_classes=2))
data_preprocessor = dict(num_classes=2)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.01))
