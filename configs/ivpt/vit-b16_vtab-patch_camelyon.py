# iVPT on VTAB-1k patch_camelyon (2 classes).
# N = 30 CDC prompts, k = 30 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'patch_camelyon'
model = dict(backbone=dict(prompt=dict(num_tokens=30, num_ar_tokens=30)), head=dict(num_classes=2))
data_preprocessor = dict(num_classes=2)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
