# Full fine-tuning on VTAB-1k resisc45 (45 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'resisc45'
model = dict(head=dict(num_classes=45))
data_preprocessor = dict(num_classes=45)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
