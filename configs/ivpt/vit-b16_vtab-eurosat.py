# iVPT on VTAB-1k eurosat (10 classes).
# N = 50 CDC prompts, k = 5 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'eurosat'
model = dict(backbone=dict(prompt=dict(num_tokens=50, num_ar_tokens=5)), head=dict(num_classes=10))
data_preprocessor = dict(num_classes=10)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
