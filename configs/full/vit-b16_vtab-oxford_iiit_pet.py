# Full fine-tuning on VTAB-1k oxford_iiit_pet (37 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'oxford_iiit_pet'
model = dict(head=dict(num_classes=37))
data_preprocessor = dict(num_classes=37)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
