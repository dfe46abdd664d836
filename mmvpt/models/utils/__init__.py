from .attention import cross_attention, self_attention
from .vit_checkpoint import (CheckpointMismatchError, load_vit_pretrained, openmmlab_vit_to_timm,
                             timm_vit_to_mmseg)

__all__ = ['cross_attention', 'self_attention', 'CheckpointMismatchError', 'load_vit_pretrained',
           'openmmlab_vit_to_timm', 'timm_vit_to_mmseg']
