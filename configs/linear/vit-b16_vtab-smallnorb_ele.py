# Linear probing on VTAB-1k smallnorb_ele (9 classes).
_base_ = ['../_base_/methods/linear.py', '../_base_/datasets/vtab1k.py']

task = 'smallnorb_ele'
model = dict(head=dict(num_classes=9))
data_preprocessor = dict(num_classes=9)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
