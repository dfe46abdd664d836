# LoRA on VTAB-1k smallnorb_azi (18 classes).
# lr 0.001, wd 0.0001, batch 64 (NOAH's VTAB-1k LoRA script).
_base_ = ['../_base_/methods/lora.py', '../_base_/datasets/vtab1k.py']

task = 'smallnorb_azi'
model = dict(head=dict(num_classes=18))
data_preprocessor = dict(num_classes=18)
train_dataloader = dict(batch_size=64, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.001, weight_decay=0.0001))
