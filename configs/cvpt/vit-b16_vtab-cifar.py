# CVPT on VTAB-1k cifar (100 classes).
# 10 prompts, lr 0.001 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'cifar'
model = dict(backbone=dict(prompt=dict(num_tokens=10)), head=dict(num_classes=100))
data_preprocessor = dict(num_classes=100)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.001))
