# CVPT on FGVC dogs (120 classes).
# 10 prompts, lr 0.0002, wd 1e-05, batch 16 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/fgvc.py']

task = 'dogs'
model = dict(backbone=dict(prompt=dict(num_tokens=10)), head=dict(num_classes=120))
data_preprocessor = dict(num_classes=120)
train_dataloader = dict(batch_size=16, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=1e-05))
