# iVPT for segmentation: CDC + DA with N = 10 prompts, no attentive reinforcement
# (43.67 / 45.12 SS / MS mIoU; N = 100 gave 44.77 / 45.84).
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.IVPT', num_tokens=10, num_ar_tokens=0,
                                       dynamic_aggregation=True, dropout=0.1)))
