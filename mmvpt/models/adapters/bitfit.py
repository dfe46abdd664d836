"""BitFit (Ben Zaken et al., ACL 2022): the frozen model's bias terms are the tuned tensors.

Each is held as a change (zero at the start) added to its operation's output: for a linear,
conv or norm, W x + b + d is the operation with bias b + d, so the frozen weights stay shared
(several tasks on one backbone) and merging is b += d."""
import torch.nn as nn

from mmvpt.registry import MODELS

from ..utils.protocols import adamw_grid
from .base import ChannelAffine


@MODELS.register_module()
class BitFit(ChannelAffine):
    """Tunes every bias of the frozen model: those of each block's norm1, qkv (where it has
    one), proj, norm2, fc1 and fc2, of the patch embedding (on Swin its projection's and its
    norm's), of each patch merging's norm (Swin; its reduction has none) and of the final
    norm.

    Args:
        position_bias: also tune Swin's relative-position bias tables (a change of each
            block's table, looked up like it). They are position terms rather than biases
            in BitFit's sense; VPT's Swin "Bias" baseline tuned every tensor named ``*bias*``
            and so them too: set True to reproduce it.
    """
    display_name = 'BitFit'
    #: tools/protocol.py: no source gives a VTAB-1k or FGVC recipe
    protocol = adamw_grid('our AdamW grid', 'no source gives a BitFit recipe for VTAB-1k or FGVC')
    config_folder = 'bitfit'
    table_order = 110
    benchmark_rows = {'bitfit': ('', {})}
    tiny_settings = {'bitfit': {}}
    swin_config = dict(backbone='swin_b_bias_tables', comments=(
        "BitFit: the relative-position bias tables too, as VPT's Swin \"Bias\" baseline.", ),
        lines=())

    @classmethod
    def backbone_options(cls, backbone):
        # VPT's Swin "Bias" row trained the relative-position tables too (as the Swin-B configs)
        return dict(position_bias=True) if backbone == 'swin' else {}

    @classmethod
    def config_recipe(cls, benchmark, task):
        return dict(
            note='lr 1e-3, wd 1e-4, batch 64: our default; no source gives a BitFit recipe here.')
    shift_prefix = 'bias'
    shift_init = staticmethod(nn.init.zeros_)

    def __init__(self, position_bias=False, **backbone):
        super().__init__(**backbone)
        self.position_bias = position_bias
        if position_bias:
            entries = self.position_bias_entries
            if entries is None:
                raise ValueError('BitFit position_bias=True: this backbone has no '
                                 'relative-position bias tables (Swin has)')
            if any(len(set(entries[start:end])) > 1 for start, end in self.stages):
                raise ValueError('BitFit position_bias=True needs one table size per stage, '
                                 f'got {entries}')
            self.op_parameter('bias_position', 'position_bias', lambda rows, heads: (rows, heads),
                              nn.init.zeros_)

    def backbone_ops(self):
        return tuple(op for op in super().backbone_ops() if op != 'qkv' or self.qkv_bias)

    def adapt(self, ctx, layer, name, module, x):
        if name == 'position_bias':  # the table changed, then looked up
            if not self.position_bias:
                return module(x)
            return module(x + ctx.per_sample(ctx.at('bias_position', layer)).to(x.dtype))
        return super().adapt(ctx, layer, name, module, x)

    def merge_into(self, backbone):
        super().merge_into(backbone)
        if self.position_bias:
            for layer, block in enumerate(backbone.blocks):
                table = block.attn.relative_position_bias_table
                table.add_(self.layer_of(self.bias_position, layer).to(table))

    def extra_repr(self):
        return super().extra_repr() + f', position_bias={self.position_bias}'
