# CVPT on FGVC cars (196 classes).
# 100 prompts, lr 0.002, wd 0.05, batch 16 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/fgvc.py']

task = 'cars'
model = dict(backbone=dict(prompt=dict(num_tokens=100)), head=dict(num_classes=196))
data_preprocessor = dict(num_classes=196)
train_dataloader = dict(batch_size=16, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.002, weight_decay=0.05))
