"""Adapter (Houlsby et al., ICML 2019): a bottleneck with its own skip connection on a block
branch's output, h + up(act(down(h))), after the attention and the MLP (Houlsby's
placement) or after the MLP only (Pfeiffer's). The up-projection starts at zero, so the
adapter starts as the identity."""
import torch.nn as nn
import torch.nn.functional as F

from mmvpt.registry import MODELS

from ..prompts.base import check_choices, check_positive
from ..utils.protocols import adamw_grid, fixed_recipe
from .base import AdapterMethod, kaiming_rows, noah_recipe

PLACEMENTS = ('attn', 'mlp')
ACTIVATIONS = {'relu': F.relu, 'gelu': F.gelu}


@MODELS.register_module()
class Adapter(AdapterMethod):
    """Sequential bottleneck adapters.

    Args:
        bottleneck: the adapter's inner width.
        placement: the branches whose outputs get an adapter: ``('attn', 'mlp')``
            (Houlsby) or ``('mlp', )`` (Pfeiffer).
        activation: ``'relu'`` or ``'gelu'``.
    """
    display_name = 'Adapter'
    #: tools/protocol.py: NOAH's one VTAB-1k recipe for every task; no source gives an FGVC one
    protocol = dict(
        vtab=fixed_recipe("NOAH's VTAB-1k Adapter recipe",
                          'ZhangYuanhan-AI/NOAH configs/Adapter/VTAB/slurm_train_adapter_vtab.sh'),
        fgvc=adamw_grid('our AdamW grid', 'no source gives a Adapter FGVC recipe'))
    config_folder = 'adapter'
    table_order = 90
    benchmark_rows = {'adapter': (' (8, attn + mlp)', dict(bottleneck=8))}
    tiny_settings = {'adapter': dict(bottleneck=4)}

    @classmethod
    def config_recipe(cls, benchmark, task):
        return noah_recipe(cls.display_name, benchmark)

    def __init__(self, bottleneck=64, placement=PLACEMENTS, activation='relu', **backbone):
        super().__init__(**backbone)
        check_positive('bottleneck', bottleneck)
        placement = (placement, ) if isinstance(placement, str) else tuple(placement)
        if (not placement or any(p not in PLACEMENTS for p in placement)
                or len(set(placement)) != len(placement)):
            raise ValueError(f'Adapter placement={placement!r}: '
                             f'name distinct branches among {PLACEMENTS}')
        check_choices('Adapter', activation=(activation, tuple(ACTIVATIONS)))
        self.bottleneck, self.placement, self.activation = bottleneck, placement, activation
        for branch in placement:  # the branch output's width: the block's
            self.op_parameter(f'{branch}_down_weight', 'proj', lambda i, o: (bottleneck, o),
                              kaiming_rows)
            self.op_parameter(f'{branch}_down_bias', 'proj', lambda i, o: (bottleneck, ),
                              nn.init.zeros_)
            self.op_parameter(f'{branch}_up_weight', 'proj', lambda i, o: (o, bottleneck),
                              nn.init.zeros_)
            self.op_parameter(f'{branch}_up_bias', 'proj', lambda i, o: (o, ), nn.init.zeros_)

    def branch(self, ctx, layer, name, x, out):
        if name not in self.placement:
            return out
        return out + self.bottleneck_output(ctx, layer, name, out)

    def bottleneck_output(self, ctx, layer, name, h):
        """up(act(down(h))): block ``layer``'s bottleneck of the ``name`` branch on ``h``."""
        h = ACTIVATIONS[self.activation](self.linear(ctx, layer, f'{name}_down', h))
        return self.linear(ctx, layer, f'{name}_up', h)

    def extra_repr(self):
        return (f'bottleneck={self.bottleneck}, placement={self.placement}, '
                f'activation={self.activation!r}')
