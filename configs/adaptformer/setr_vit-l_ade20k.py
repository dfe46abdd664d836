# AdaptFormer (bottleneck 64, scale 0.1) on every block of the frozen ViT-L/16, with the
# SETR-PUP head.
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(
    prompt=dict(type='mmvpt.AdaptFormer', bottleneck=64, scale=0.1, dropout=0.1)))
