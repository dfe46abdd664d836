# CVPT on VTAB-1k resisc45 (45 classes).
# 10 prompts, lr 0.005 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'resisc45'
model = dict(backbone=dict(prompt=dict(num_tokens=10)), head=dict(num_classes=45))
data_preprocessor = dict(num_classes=45)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.005))
