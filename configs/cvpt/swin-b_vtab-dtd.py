# CVPT on VTAB-1k dtd with Swin-B ImageNet-22k; the recipe of the ViT-B config.
_base_ = ['./vit-b16_vtab-dtd.py']

model = dict(
    backbone=dict(
        type='mmvpt.PromptedSwin',
        arch='swin_base_patch4_window7_224',
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrained/swin_base_patch4_window7_224_22k.pth')),
    head=dict(in_channels=1024))
