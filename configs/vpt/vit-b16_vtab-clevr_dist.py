# VPT-deep on VTAB-1k clevr_dist (6 classes).
# 10 prompts is our default; VPT chose the prompt length per task (tools/protocol.py searches it).
_base_ = ['../_base_/methods/vpt.py', '../_base_/datasets/vtab1k.py']

task = 'clevr_dist'
model = dict(backbone=dict(prompt=dict(num_tokens=10)), head=dict(num_classes=6))
data_preprocessor = dict(num_classes=6)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
