# iVPT on FGVC nabirds (555 classes).
# N = 50 CDC prompts, k = 10 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/fgvc.py']

task = 'nabirds'
model = dict(backbone=dict(prompt=dict(num_tokens=50, num_ar_tokens=10)),
             head=dict(num_classes=555))
data_preprocessor = dict(num_classes=555)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
