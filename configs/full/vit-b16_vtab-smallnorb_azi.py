# Full fine-tuning on VTAB-1k smallnorb_azi (18 classes).
_base_ = ['../_base_/methods/full.py', '../_base_/datasets/vtab1k.py']

task = 'smallnorb_azi'
model = dict(head=dict(num_classes=18))
data_preprocessor = dict(num_classes=18)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
