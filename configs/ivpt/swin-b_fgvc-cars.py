# iVPT on FGVC cars with Swin-B ImageNet-22k; the recipe of the ViT-B config.
# iVPT: no attentive reinforcement, which needs a CLS token (Swin has none).
_base_ = ['./vit-b16_fgvc-cars.py']

model = dict(
    backbone=dict(
        type='mmvpt.PromptedSwin',
        arch='swin_base_patch4_window7_224',
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrained/swin_base_patch4_window7_224_22k.pth'),
        prompt=dict(num_ar_tokens=0)),
    head=dict(in_channels=1024))
