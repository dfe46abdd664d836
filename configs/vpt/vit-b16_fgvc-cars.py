# VPT-deep on FGVC cars (196 classes).
# 10 prompts is our default; VPT chose the prompt length per task (tools/protocol.py searches it).
_base_ = ['../_base_/methods/vpt.py', '../_base_/datasets/fgvc.py']

task = 'cars'
model = dict(backbone=dict(prompt=dict(num_tokens=10)), head=dict(num_classes=196))
data_preprocessor = dict(num_classes=196)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
