# Linear probing on FGVC dogs (120 classes).
_base_ = ['../_base_/methods/linear.py', '../_base_/datasets/fgvc.py']

task = 'dogs'
model = dict(head=dict(num_classes=120))
data_preprocessor = dict(num_classes=120)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
