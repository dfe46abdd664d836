# ViT-B/16 ImageNet-21k (Google's ViT-B_16.npz, what VPT, E2VPT and CVPT used), frozen.
# The method configs under ../methods/ plug a prompt method in.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmvpt.PromptedViT',
        arch='vit_base_patch16_224',
        img_size=224,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/ViT-B_16.npz')),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss'),
        topk=(1, )))
