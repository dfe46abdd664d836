# Linear probing on VTAB-1k dmlab (6 classes).
_base_ = ['../_base_/methods/linear.py', '../_base_/datasets/vtab1k.py']

task = 'dmlab'
model = dict(head=dict(num_classes=6))
data_preprocessor = dict(num_classes=6)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
