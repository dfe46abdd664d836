# DoRA rank 8 on q and v of every block of the frozen ViT-L/16 (LoRA's update, with a learned
# magnitude per output row from the frozen weights), with the SETR-PUP head.
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.DoRA', rank=8, alpha=8, targets=('q', 'v'))))
