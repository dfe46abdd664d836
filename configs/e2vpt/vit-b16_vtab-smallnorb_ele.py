# E2VPT on VTAB-1k smallnorb_ele (9 classes).
# 10 visual / 5 key-value prompts (E2VPT paper).
_base_ = ['../_base_/methods/e2vpt.py', '../_base_/datasets/vtab1k.py']

task = 'smallnorb_ele'
model = dict(backbone=dict(prompt=dict(num_tokens=10, num_kv_tokens=5)), head=dict(num_classes=9))
data_preprocessor = dict(num_classes=9)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
