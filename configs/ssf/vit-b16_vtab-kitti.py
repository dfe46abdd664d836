# SSF on VTAB-1k kitti (4 classes).
# lr 0.01, wd 5e-05, drop-path 0, batch 32 x 2 GPUs (SSF's train script for this task).
_base_ = ['../_base_/methods/ssf.py', '../_base_/datasets/vtab1k.py']

task = 'kitti'
model = dict(backbone=dict(drop_path_rate=0.0), head=dict(num_classes=4))
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(batch_size=64, dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=0.01, weight_decay=5e-05))
