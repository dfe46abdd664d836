# iVPT on VTAB-1k dsprites_ori (16 classes).
# N = 50 CDC prompts, k = 1 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'dsprites_ori'
model = dict(backbone=dict(prompt=dict(num_tokens=50, num_ar_tokens=1)), head=dict(num_classes=16))
data_preprocessor = dict(num_classes=16)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
