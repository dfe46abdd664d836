# Adapter+ (width 8, channel-wise scaling, after every block) on the frozen ViT-L/16, with the
# SETR-PUP head.
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.AdapterPlus', bottleneck=8)))
