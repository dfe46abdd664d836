# E2VPT on VTAB-1k oxford_flowers102 (102 classes).
# 1 visual / 1 key-value prompts (E2VPT paper).
_base_ = ['../_base_/methods/e2vpt.py', '../_base_/datasets/vtab1k.py']

task = 'oxford_flowers102'
model = dict(backbone=dict(prompt=dict(num_tokens=1, num_kv_tokens=1)), head=dict(num_classes=102))
data_preprocessor = dict(num_classes=102)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
