# E2VPT on VTAB-1k svhn with Swin-B ImageNet-22k; the recipe of the ViT-B config.
# E2VPT: batch 80 on Swin (paper 002), lr 2.5 x batch / 256; pruning reaches the first stage only.
_base_ = ['./vit-b16_vtab-svhn.py']

model = dict(
    backbone=dict(
        type='mmvpt.PromptedSwin',
        arch='swin_base_patch4_window7_224',
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrained/swin_base_patch4_window7_224_22k.pth')),
    head=dict(in_channels=1024))
train_dataloader = dict(batch_size=80)
optim_wrapper = dict(optimizer=dict(lr=0.78125))
