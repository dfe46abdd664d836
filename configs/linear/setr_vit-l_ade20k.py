# Frozen ViT-L/16, SETR-PUP head only (35.12 / 37.46 SS / MS mIoU in the CVPT paper).
_base_ = ['../_base_/setr_vit-l_ade20k.py']
