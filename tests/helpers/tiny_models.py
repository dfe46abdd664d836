"""Tiny ViT and Swin backbones and a prompt config per method and path, for tests that run
every method on both backbones (mixed precision, torch.compile)."""
from mmvpt.models import PromptedSwin, PromptedViT

BACKBONES = {
    'vit': (PromptedViT, dict(arch='vit_base_patch16_224', img_size=32,
                              arch_cfg=dict(patch_size=8, embed_dim=32, depth=3, num_heads=4))),
    'swin': (PromptedSwin, dict(arch='swin_tiny_patch4_window7_224', img_size=32,
                                arch_cfg=dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4))),
}
# CVPT folds its cross-attention into the prompt side on CPU for few prompts (2), not for many
# (12), on both backbones. iVPT's attentive reinforcement needs a CLS token: ViT only.
# 'e2vpt_pruned' is meant to be pruned by the test ('mask' mode, KV after, separate V).
METHODS = {
    'vpt_deep': dict(type='mmvpt.VPT', num_tokens=3),
    'vpt_shallow': dict(type='mmvpt.VPT', num_tokens=3, deep=False),
    'e2vpt': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4),
    'e2vpt_pruned': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4,
                         share_kv=False, kv_location='after', prune_mode='mask'),
    'cvpt_folded': dict(type='mmvpt.CVPT', num_tokens=2),
    'cvpt_plain': dict(type='mmvpt.CVPT', num_tokens=12, ca_trainable=True),
    'ivpt': dict(type='mmvpt.IVPT', num_tokens=3, num_ar_tokens=2),
    'linear': None,
}


def prompt_config(backbone, method, methods=METHODS):
    """``methods[method]`` as it runs on ``backbone`` (Swin: iVPT without AR)."""
    prompt = methods[method]
    if prompt is not None and prompt['type'] == 'mmvpt.IVPT' and backbone == 'swin':
        prompt = {**prompt, 'num_ar_tokens': 0}
    return prompt
