# CVPT on FGVC nabirds (555 classes).
# 200 prompts, lr 0.0002, wd 1e-05, batch 16 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/fgvc.py']

task = 'nabirds'
model = dict(backbone=dict(prompt=dict(num_tokens=200)), head=dict(num_classes=555))
data_preprocessor = dict(num_classes=555)
train_dataloader = dict(batch_size=16, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=1e-05))
