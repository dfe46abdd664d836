# CVPT on VTAB-1k oxford_flowers102 (102 classes).
# 5 prompts, lr 0.002 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'oxford_flowers102'
model = dict(backbone=dict(prompt=dict(num_tokens=5)), head=dict(num_classes=102))
data_preprocessor = dict(num_classes=102)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.002))
