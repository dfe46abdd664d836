# The demo task with CVPT on a frozen tiny ViT (randomly initialised here; point
# init_cfg at real weights for real use).
_base_ = ['./vit-tiny_synthetic.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvpt.PromptedViT',
        arch='vit_base_patch16_224',
        arch_cfg=dict(patch_size=8, embed_dim=64, depth=4, num_heads=4),
        img_size={{_base_.img_size}},
        prompt=dict(type='mmvpt.CVPT', num_tokens=8)))
custom_hooks = [dict(type='mmvpt.ParameterReportHook')]
