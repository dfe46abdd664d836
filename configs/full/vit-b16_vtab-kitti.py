# Full fine-tuning on VTAB-1k kitti (4 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'kitti'
model = dict(head=dict(num_classes=4))
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
