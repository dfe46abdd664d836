# Full fine-tuning on VTAB-1k dsprites_loc (16 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'dsprites_loc'
model = dict(head=dict(num_classes=16))
data_preprocessor = dict(num_classes=16)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
