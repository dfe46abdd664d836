# Full fine-tuning on VTAB-1k clevr_dist (6 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'clevr_dist'
model = dict(head=dict(num_classes=6))
data_preprocessor = dict(num_classes=6)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
