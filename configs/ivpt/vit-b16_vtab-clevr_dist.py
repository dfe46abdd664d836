# iVPT on VTAB-1k clevr_dist (6 classes).
# N = 50 CDC prompts, k = 100 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'clevr_dist'
model = dict(backbone=dict(prompt=dict(num_tokens=50, num_ar_tokens=100)), head=dict(num_classes=6))
data_preprocessor = dict(num_classes=6)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
