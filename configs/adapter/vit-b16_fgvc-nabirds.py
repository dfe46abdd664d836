# Adapter on FGVC nabirds (555 classes).
# lr 1e-3, wd 1e-4, batch 64: NOAH's VTAB-1k recipe as our default; no source gives FGVC's.
_base_ = ['../_base_/methods/adapter.py', '../_base_/datasets/fgvc.py']

task = 'nabirds'
model = dict(head=dict(num_classes=555))
data_preprocessor = dict(num_classes=555)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
