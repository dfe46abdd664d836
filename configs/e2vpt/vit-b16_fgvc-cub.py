# E2VPT on FGVC cub (200 classes).
# 5 visual / 5 key-value prompts (E2VPT paper).
_base_ = ['../_base_/methods/e2vpt.py', '../_base_/datasets/fgvc.py']

task = 'cub'
model = dict(backbone=dict(prompt=dict(num_tokens=5, num_kv_tokens=5)), head=dict(num_classes=200))
data_preprocessor = dict(num_classes=200)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
