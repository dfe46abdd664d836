# Swin-B ImageNet-22k (the official swin_base_patch4_window7_224_22k.pth, or timm's), frozen.
# A Swin task config inherits the ViT-B config of its task and swaps the backbone:
#     _base_ = ['./vit-b16_vtab-cifar.py', '../_base_/models/swin-b.py']
#     model = dict(backbone={{_base_.swin_b}}, head=dict(in_channels=1024))
swin_b = dict(
    type='mmvpt.PromptedSwin',
    arch='swin_base_patch4_window7_224',
    # As VPT's and E²VPT's Swin code: the pooled feature averages the prompt outputs too,
    # and VPT-shallow's prompts go through patch merging into every stage.
    pool_prompts=True,
    init_cfg=dict(type='Pretrained', checkpoint='pretrained/swin_base_patch4_window7_224_22k.pth'))
# iVPT's attentive reinforcement needs a CLS token, which Swin lacks.
swin_b_without_ar = dict(swin_b, prompt=dict(num_ar_tokens=0))
# The Swin "Bias" row of VPT's and E²VPT's tables (0.29% tuned): VPT's code tuned every tensor
# named *bias*, the relative-position bias tables too.
swin_b_bias_tables = dict(swin_b, prompt=dict(position_bias=True))
