"""SSF (Lian et al., NeurIPS 2022): a learnable scale and shift, y * gamma + beta, after every
operation of the frozen model, where the authors' code applies them: each block's norm1,
qkv, proj, norm2, fc1 and fc2, the patch embedding, the final norm and, on Swin, also the
patch projection before the embedding's norm and each patch merging's norm."""
import torch.nn as nn

from mmvpt.registry import MODELS
from ..utils.protocols import fixed_recipe
from .base import BLOCK_OPS, OUTER_OPS, ChannelAffine

SSF_OPS = OUTER_OPS + BLOCK_OPS


def ssf_scale(tensor):
    nn.init.normal_(tensor, mean=1., std=.02)


def ssf_shift(tensor):
    nn.init.normal_(tensor, std=.02)


@MODELS.register_module()
class SSF(ChannelAffine):
    """Scale and shift every frozen operation's output channels.

    Args:
        ops: the operations to scale and shift, among :data:`SSF_OPS` (default: all of
            them that the backbone has; ``'patch_proj'`` and ``'merge_norm'`` are Swin's).
    """
    display_name = 'SSF'
    #: tools/protocol.py: the authors' per-task train scripts fix lr, wd and drop-path (the
    #: generated configs carry them)
    protocol = fixed_recipe("SSF's per-task recipe", 'dongzelian/SSF train_scripts/vit/'
                            '{vtab,fgvc}/<task>/train_ssf.sh')
    scale_init = staticmethod(ssf_scale)
    shift_init = staticmethod(ssf_shift)

    def __init__(self, ops=SSF_OPS, **backbone):
        ops = tuple(ops)
        unknown = [op for op in ops if op not in SSF_OPS]
        if unknown or not ops:
            raise ValueError(f'SSF ops={ops!r}: choose among {SSF_OPS}')
        super().__init__(ops, **backbone)
        if not self.ops:
            raise ValueError(f'SSF ops={ops!r}: this backbone has none of them')
