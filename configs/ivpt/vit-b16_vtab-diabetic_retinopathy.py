# iVPT on VTAB-1k diabetic_retinopathy (5 classes).
# N = 30 CDC prompts, k = 30 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'diabetic_retinopathy'
model = dict(backbone=dict(prompt=dict(num_tokens=30, num_ar_tokens=30)), head=dict(num_classes=5))
data_preprocessor = dict(num_classes=5)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
