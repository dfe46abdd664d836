# CVPT on VTAB-1k kitti (4 classes).
# 20 prompts, lr 0.005 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'kitti'
model = dict(backbone=dict(prompt=dict(num_tokens=20)), head=dict(num_classes=4))
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.005))
