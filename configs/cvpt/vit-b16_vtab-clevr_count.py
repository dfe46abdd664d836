# CVPT on VTAB-1k clevr_count (8 classes).
# 20 prompts, lr 0.001 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'clevr_count'
model = dict(backbone=dict(prompt=dict(num_tokens=20)), head=dict(num_classes=8))
data_preprocessor = dict(num_classes=8)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.001))
