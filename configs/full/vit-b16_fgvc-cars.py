# Full fine-tuning on FGVC cars (196 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/fgvc.py']

task = 'cars'
model = dict(head=dict(num_classes=196))
data_preprocessor = dict(num_classes=196)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
