# iVPT on VTAB-1k smallnorb_ele (9 classes).
# N = 200 CDC prompts, k = 1 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/vtab1k.py']

task = 'smallnorb_ele'
model = dict(backbone=dict(prompt=dict(num_tokens=200, num_ar_tokens=1)), head=dict(num_classes=9))
data_preprocessor = dict(num_classes=9)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
