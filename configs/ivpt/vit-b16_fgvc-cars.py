# iVPT on FGVC cars (196 classes).
# N = 10 CDC prompts, k = 10 AR prompts (iVPT paper).
_base_ = ['../_base_/methods/ivpt.py', '../_base_/datasets/fgvc.py']

task = 'cars'
model = dict(backbone=dict(prompt=dict(num_tokens=10, num_ar_tokens=10)),
             head=dict(num_classes=196))
data_preprocessor = dict(num_classes=196)
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_train_pipeline}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.ivpt_test_pipeline}}))
