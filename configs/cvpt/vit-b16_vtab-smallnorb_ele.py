# CVPT on VTAB-1k smallnorb_ele (9 classes).
# 50 prompts, lr 0.001 (CVPT paper).
_base_ = ['../_base_/methods/cvpt.py', '../_base_/datasets/vtab1k.py']

task = 'smallnorb_ele'
model = dict(backbone=dict(prompt=dict(num_tokens=50)), head=dict(num_classes=9))
data_preprocessor = dict(num_classes=9)
train_dataloader = dict(batch_size=32, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.001))
