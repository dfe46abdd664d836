# DoRA on VTAB-1k dsprites_loc (16 classes).
# lr 1e-3, wd 1e-4, batch 64: our default (LoRA's NOAH recipe); no source gives a DoRA recipe for
# VTAB-1k or FGVC.
_base_ = ['../_base_/methods/dora.py', '../_base_/datasets/vtab1k.py']

task = 'dsprites_loc'
model = dict(head=dict(num_classes=16))
data_preprocessor = dict(num_classes=16)
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
