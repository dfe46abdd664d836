# VPT-deep with 10 prompts (42.11 / 44.06 SS / MS mIoU as reported, 13.43M tuned with heads).
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.VPT', num_tokens=10, deep=True, dropout=0.1)))
