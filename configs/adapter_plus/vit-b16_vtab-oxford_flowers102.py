# Adapter+ on VTAB-1k oxford_flowers102 (102 classes).
# width 8 on every task, as the authors (visinf/adapter_plus vtab/adapter_plus_dim8.yaml).
_base_ = ['../_base_/methods/adapter_plus.py', '../_base_/datasets/vtab1k.py']

task = 'oxford_flowers102'
model = dict(backbone=dict(prompt=dict(bottleneck=8)), head=dict(num_classes=102))
data_preprocessor = dict(num_classes=102, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])
train_dataloader = dict(drop_last=True, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
