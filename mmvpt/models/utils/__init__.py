from .attention import (cross_attention, probe_attention, project_kv, self_attention,
                        window_attention)
from .block import residual_block
from .swin_checkpoint import load_swin_pretrained
from .vit_checkpoint import (CheckpointMismatchError, load_vit_pretrained, openmmlab_vit_to_timm,
                             timm_vit_to_mmseg)

__all__ = ['cross_attention', 'probe_attention', 'project_kv', 'self_attention', 'window_attention', 'residual_block',
           'CheckpointMismatchError', 'load_swin_pretrained', 'load_vit_pretrained',
           'openmmlab_vit_to_timm', 'timm_vit_to_mmseg']
