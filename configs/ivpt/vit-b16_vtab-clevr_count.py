# iVPT on VTAB-1k clevr_count (8 classes).
# N = 100 CDC prompts, k = 50 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'clevr_count'
model = dict(backbone=dict(prompt=dict(num_tokens=100, num_ar_tokens=50)), head=dict(num_classes=8))
data_preprocessor = dict(num_classes=8)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
