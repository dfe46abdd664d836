# Full fine-tuning on VTAB-1k diabetic_retinopathy (5 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'diabetic_retinopathy'
model = dict(head=dict(num_classes=5))
data_preprocessor = dict(num_classes=5)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
