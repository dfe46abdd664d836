# E2VPT on VTAB-1k kitti with Swin-B ImageNet-22k; the recipe of the ViT-B config.
# E2VPT: batch 80 on Swin (E2VPT paper), lr 2.5 x batch / 256; pruning reaches the first stage only.
_base_ = ['./vit-b16_vtab-kitti.py', '../_base_/models/swin-b.py']

model = dict(backbone={{_base_.swin_b}}, head=dict(in_channels=1024))
train_dataloader = dict(batch_size=80)
optim_wrapper = dict(optimizer=dict(lr=0.78125))
