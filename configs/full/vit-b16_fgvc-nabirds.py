# Full fine-tuning on FGVC nabirds (555 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/fgvc.py']

task = 'nabirds'
model = dict(head=dict(num_classes=555))
data_preprocessor = dict(num_classes=555)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
