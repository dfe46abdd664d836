"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck beside each block's MLP,
x + MLP(LN2 x) + s * up(ReLU(down(x))), its input the stream the MLP branches from, its
up-projection zero at the start (the authors' "lora" init)."""
import torch.nn as nn
import torch.nn.functional as F

from mmvpt.registry import MODELS

from ..prompts.base import check_positive
from ..utils.protocols import adamw_grid
from .base import AdapterMethod, kaiming_rows


@MODELS.register_module()
class AdaptFormer(AdapterMethod):
    """A parallel bottleneck adapter on every block's MLP.

    Args:
        bottleneck: the adapter's inner width (64 in the authors' VTAB-1k runs).
        scale: s, the factor on the adapter's output (0.1).
        dropout: dropout after the ReLU (0.1, the authors' code).
    """
    display_name = 'AdaptFormer'
    #: tools/protocol.py: no source gives a VTAB-1k or FGVC recipe
    protocol = adamw_grid('our AdamW grid',
                          'no source gives a AdaptFormer recipe for VTAB-1k or FGVC')
    config_folder = 'adaptformer'
    table_order = 80
    benchmark_rows = {'adaptformer': (' (64)', dict(bottleneck=64))}
    tiny_settings = {'adaptformer': dict(bottleneck=4)}

    @classmethod
    def config_recipe(cls, benchmark, task):
        return dict(note="lr 1e-3, wd 1e-4, batch 64: our default; "
                         "AdaptFormer's code has no VTAB-1k or FGVC recipe.")

    def __init__(self, bottleneck=64, scale=0.1, dropout=0.1, **backbone):
        super().__init__(**backbone)
        check_positive('bottleneck', bottleneck)
        if not 0 <= dropout < 1:
            raise ValueError(f'AdaptFormer dropout={dropout!r}: must be in [0, 1)')
        self.bottleneck, self.scale, self.dropout = bottleneck, scale, dropout
        self.op_parameter('down_weight', 'norm2', lambda i, o: (bottleneck, i), kaiming_rows)
        self.op_parameter('down_bias', 'norm2', lambda i, o: (bottleneck, ), nn.init.zeros_)
        self.op_parameter('up_weight', 'norm2', lambda i, o: (o, bottleneck), nn.init.zeros_)
        self.op_parameter('up_bias', 'norm2', lambda i, o: (o, ), nn.init.zeros_)

    def branch(self, ctx, layer, name, x, out):
        if name != 'mlp':
            return out
        h = F.relu(self.linear(ctx, layer, 'down', x))
        h = F.dropout(h, self.dropout, self.training) if self.dropout else h
        return out + self.linear(ctx, layer, 'up', h) * self.scale

    def extra_repr(self):
        return f'bottleneck={self.bottleneck}, scale={self.scale}'

