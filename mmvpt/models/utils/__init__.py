from .attention import (
    cross_attention,
    cross_attention_prompts,
    probe_attention,
    project_kv,
    self_attention,
    window_attention,
)
from .swin_checkpoint import load_swin_pretrained
from .vit_checkpoint import (
    CheckpointMismatchError,
    load_vit_pretrained,
    openmmlab_vit_to_timm,
    timm_vit_to_mmseg,
)

__all__ = ['cross_attention', 'cross_attention_prompts', 'probe_attention', 'project_kv',
           'self_attention', 'window_attention',
           'CheckpointMismatchError', 'load_swin_pretrained', 'load_vit_pretrained',
           'openmmlab_vit_to_timm', 'timm_vit_to_mmseg']
