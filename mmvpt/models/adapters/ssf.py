"""SSF (Lian et al., NeurIPS 2022): a learnable scale and shift, y * gamma + beta, after every
operation of the frozen model, where the authors' code applies them: each block's norm1,
qkv, proj, norm2, fc1 and fc2, the patch embedding, the final norm and, on Swin, also the
patch projection before the embedding's norm and each patch merging's norm."""
import torch.nn as nn

from mmvpt.registry import MODELS

from ..utils.protocols import fixed_recipe
from .base import BLOCK_OPS, OUTER_OPS, ChannelAffine

SSF_OPS = OUTER_OPS + BLOCK_OPS
# lr / wd / drop-path per task, from the authors' train scripts (dongzelian/SSF,
# train_scripts/vit/vtab/<task>/train_ssf.sh and train_scripts/vit/fgvc/<task>/train_ssf.sh):
# AdamW, 100 epochs with 10 warm-up (the base schedule's), batch 32 on each of 2 GPUs. The
# released 2-GPU versions; the repository's history also holds 1-GPU ones (batch 128, 200-250
# epochs, some other lr) that we do not follow.
SSF_VTAB = dict(
    cifar=(5e-3, 5e-5, 0.), caltech101=(1e-3, 5e-2, 0.1), dtd=(5e-3, 5e-5, 0.),
    oxford_flowers102=(5e-3, 5e-5, 0.), oxford_iiit_pet=(5e-3, 5e-5, 0.), svhn=(1e-2, 5e-5, 0.),
    sun397=(5e-3, 5e-5, 0.), patch_camelyon=(5e-3, 5e-5, 0.), eurosat=(3e-3, 5e-2, 0.2),
    resisc45=(2e-3, 5e-5, 0.1), diabetic_retinopathy=(5e-3, 5e-5, 0.2),
    clevr_count=(2e-3, 5e-2, 0.1), clevr_dist=(5e-2, 5e-2, 0.1), dmlab=(5e-3, 5e-5, 0.1),
    kitti=(1e-2, 5e-5, 0.), dsprites_loc=(1e-2, 5e-5, 0.), dsprites_ori=(5e-3, 5e-5, 0.2),
    smallnorb_azi=(2e-2, 5e-5, 0.1), smallnorb_ele=(5e-3, 5e-2, 0.2))
SSF_FGVC = dict(cub=(1e-2, 5e-2, 0.), nabirds=(2e-4, 5e-2, 0.1), flowers=(1e-2, 5e-2, 0.1),
                dogs=(2.5e-4, 5e-2, 0.), cars=(2e-2, 5e-2, 0.))
SSF_BATCH = 64  # 32 per GPU x 2 GPUs


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
    config_folder = 'ssf'
    table_order = 100
    benchmark_rows = {'ssf': ('', {})}
    tiny_settings = {'ssf': {}}

    @classmethod
    def config_recipe(cls, benchmark, task):
        lr, wd, drop_path = (SSF_VTAB if benchmark == 'vtab' else SSF_FGVC)[task]
        return dict(backbone=dict(drop_path_rate=drop_path), loader=dict(batch_size=SSF_BATCH),
                    optimizer=dict(lr=lr, weight_decay=wd),
                    note=(f'lr {lr:g}, wd {wd:g}, drop-path {drop_path:g}, batch 32 x 2 GPUs '
                          "(SSF's train script for this task)."))
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
