# iVPT on VTAB-1k cifar with Swin-B ImageNet-22k; the recipe of the ViT-B config.
# iVPT: no attentive reinforcement, which needs a CLS token (Swin has none).
_base_ = ['./vit-b16_vtab-cifar.py', '../_base_/models/swin-b.py']

model = dict(backbone={{_base_.swin_b_without_ar}}, head=dict(in_channels=1024))
