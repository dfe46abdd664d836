# Full fine-tuning on VTAB-1k smallnorb_azi with Swin-B ImageNet-22k; the recipe of the ViT-B
# config.
_base_ = ['./vit-b16_vtab-smallnorb_azi.py', '../_base_/models/swin-b.py']

model = dict(backbone={{_base_.swin_b}}, head=dict(in_channels=1024))
