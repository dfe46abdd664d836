# CVPT on FGVC cub (200 classes).
# 5 prompts, lr 0.0005, wd 0.05, batch 32 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/fgvc.py']

task = 'cub'
model = dict(backbone=dict(prompt=dict(num_tokens=5)), head=dict(num_classes=200))
data_preprocessor = dict(num_classes=200)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.0005, weight_decay=0.05))
