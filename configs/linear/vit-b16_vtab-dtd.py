# Linear probing on VTAB-1k dtd (47 classes).
_base_ = ['../_base_/methods/linear.py', '../_base_/datasets/vtab1k.py']

task = 'dtd'
model = dict(head=dict(num_classes=47))
data_preprocessor = dict(num_classes=47)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
