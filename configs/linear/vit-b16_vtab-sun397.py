# Linear probing on VTAB-1k sun397 (397 classes).
_base_ = ['../_base_/methods/linear.py', '../_base_/datasets/vtab1k.py']

task = 'sun397'
model = dict(head=dict(num_classes=397))
data_preprocessor = dict(num_classes=397)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
