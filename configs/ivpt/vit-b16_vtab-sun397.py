# iVPT on VTAB-1k sun397 (397 classes).
# N = 5 CDC prompts, k = 1 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'sun397'
model = dict(backbone=dict(prompt=dict(num_tokens=5, num_ar_tokens=1)), head=dict(num_classes=397))
data_preprocessor = dict(num_classes=397)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
