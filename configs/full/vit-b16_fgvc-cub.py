# Full fine-tuning on FGVC cub (200 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/fgvc.py']

task = 'cub'
model = dict(head=dict(num_classes=200))
data_preprocessor = dict(num_classes=200)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
