"""Adapter+ (Steitz and Roth, "Adapters Strike Back", CVPR 2024): a bottleneck adapter after
each block, y + s * up(GELU(down(y))) on the block's output y (after the MLP's residual sum:
the paper's Post-Adapter), s a learned scale per channel starting at ones, both projections
drawn from Houlsby's truncated normal (std 0.01, cut at 2 std), zero biases, drop-path 0.1 on
the adapter's output, no norm inside. As the authors' code (visinf/adapter_plus,
adapter_plus/vit_adapter.py, conf/adapter/{base_adapter,adapter_plus}.yaml).

The positions and inner choices the paper ablates are options: the adapter after the
attention's residual sum (Pre), beside the MLP (Parallel), on the MLP's output before its
residual sum (Intermediate, where :class:`~mmvpt.models.adapters.Adapter` puts its own); one
learned scale or a fixed factor instead of the per-channel one; LoRA's or BERT's init; a
layer norm on the adapter's input. Its up-projection does not start at zero, so the model
does not start as the frozen one."""
import numbers

import torch.nn as nn
import torch.nn.functional as F

from mmvpt.registry import MODELS

from ..prompts.base import check_choices
from ..utils.protocols import fixed_recipe
from .adapter import Adapter
from .base import channelwise, kaiming_rows

#: where the adapter sits (the paper's names) -> the block branch whose join it changes:
#: ``'post'``: on the block's output (after the MLP's residual sum); ``'pre'``: on the stream
#: after the attention's residual sum, before the MLP; ``'parallel'``: beside the MLP, on the
#: stream the MLP branches from; ``'intermediate'``: on the MLP's output, before its sum
POSITIONS = {'post': 'mlp', 'pre': 'attn', 'parallel': 'mlp', 'intermediate': 'mlp'}
#: the projections' init: Houlsby's (both truncated normal), LoRA's (down nn.Linear's, up
#: zero), BERT's (both normal, std 0.02)
INITS = ('houlsby', 'lora', 'bert')
#: the learned scalings: one value per output channel, or one for the whole adapter
SCALINGS = ('channel', 'learned')
HOULSBY_STD = 0.01  # the paper's value (Houlsby's own code: 0.001), truncated at 2 std
BERT_STD = 0.02
NORM_EPS = 1e-6  # the ViT's layer norm, which the authors' adapter norm is

SOURCE = 'visinf/adapter_plus'
#: the seeds of the authors' runs (their experiment configs' sweeps)
AUTHOR_SEEDS = (18, 45, 25)
#: the authors' FGVC widths per task (conf/experiment/fgvc/adapter_plus_dim1-32.yaml)
FGVC_WIDTHS = dict(cub=2, nabirds=2, flowers=1, dogs=1, cars=32)
#: the widths per VTAB-1k task of the paper's "Adapter+ opt." row
#: (conf/experiment/vtab/adapter_plus_dim1-32.yaml); its headline row (77.6) is width 8
#: everywhere (adapter_plus_dim8.yaml), what the generated configs use
VTAB_OPT_WIDTHS = dict(
    cifar=1, caltech101=4, dtd=2, oxford_flowers102=1, oxford_iiit_pet=8, svhn=16, sun397=1,
    patch_camelyon=16, eurosat=2, resisc45=32, diabetic_retinopathy=32, clevr_count=4,
    clevr_dist=8, dmlab=8, kitti=8, dsprites_loc=32, dsprites_ori=4, smallnorb_azi=32,
    smallnorb_ele=8)
VTAB_WIDTH = 8
#: the authors normalise with the checkpoint's mean and std, 0.5 and 0.5 (data/*.py), which in
#: mmpretrain's 0-255 pixels is 127.5 and 127.5 (the dataset bases: ImageNet's)
CHECKPOINT_NORMALISATION = dict(mean=[127.5] * 3, std=[127.5] * 3)


def houlsby_normal(tensor):
    """Houlsby's init as the authors draw it: normal, std 0.01, cut at 2 std."""
    nn.init.trunc_normal_(tensor, std=HOULSBY_STD, a=-2 * HOULSBY_STD, b=2 * HOULSBY_STD)


def bert_normal(tensor):
    nn.init.normal_(tensor, std=BERT_STD)


@MODELS.register_module()
class AdapterPlus(Adapter):
    """Adapter+: one bottleneck adapter per block with a learned channel-wise output scale.

    Args:
        bottleneck: the adapter's inner width (8: the authors' VTAB-1k runs).
        position: ``'post'`` (Adapter+), ``'pre'``, ``'parallel'`` or ``'intermediate'``
            (see :data:`POSITIONS`).
        scaling: ``'channel'`` (Adapter+: a learned vector over the output channels, ones at
            the start), ``'learned'`` (one learned value, 1 at the start) or a number (a
            fixed factor; 1: none).
        init: ``'houlsby'`` (Adapter+), ``'lora'`` or ``'bert'`` (see :data:`INITS`).
        norm: a layer norm (learned affine, ones and zeros at the start) on the adapter's
            input (False for Adapter+).
        drop_path: stochastic depth on the adapter's output while training, one draw per
            sample and block (0.1, the authors' value; the blocks' own is the backbone's
            ``drop_path_rate``).
        activation: ``'gelu'`` (the ViT's, Adapter+) or ``'relu'``.
    """
    display_name = 'Adapter+'
    #: tools/protocol.py: the authors' one recipe; VTAB-1k at width 8 for every task, FGVC at
    #: the width of each task their config gives; their three seeds
    protocol = dict(
        vtab=fixed_recipe("Adapter+'s VTAB-1k recipe", (
            f'{SOURCE} conf/experiment/vtab/adapter_plus_dim8.yaml, conf/config.yaml, '
            'conf/adapter/adapter_plus.yaml, conf/train/default.yaml'), seeds=AUTHOR_SEEDS),
        fgvc=fixed_recipe("Adapter+'s FGVC recipe", (
            f'{SOURCE} conf/experiment/fgvc/adapter_plus_dim1-32.yaml, conf/config.yaml, '
            'conf/adapter/adapter_plus.yaml, conf/train/default.yaml, data/fgvc.py'),
            seeds=AUTHOR_SEEDS, train_split='trainval'))  # train + val, as data/fgvc.py
    config_folder = 'adapter_plus'
    table_order = 85
    benchmark_rows = {'adapter_plus': (f' ({VTAB_WIDTH})', dict(bottleneck=VTAB_WIDTH))}
    # no drop-path in the shared tests, which compare runs that draw their own masks (compiled
    # against eager, bfloat16 against float32); tests/test_models/test_adapter_plus.py has its own
    tiny_settings = {'adapter_plus': dict(bottleneck=4, drop_path=0.)}
    swin_config = dict(backbone='swin_b', comments=(), lines=())

    @classmethod
    def config_recipe(cls, benchmark, task):
        if benchmark == 'vtab':
            # the authors' VTAB loader drops the last incomplete batch (data/vtab.py)
            return dict(prompt=dict(bottleneck=VTAB_WIDTH), loader=dict(drop_last=True),
                        preprocessor=CHECKPOINT_NORMALISATION,
                        note=(f'width {VTAB_WIDTH} on every task, as the authors ({SOURCE} '
                              'vtab/adapter_plus_dim8.yaml).'))
        width = FGVC_WIDTHS[task]
        return dict(prompt=dict(bottleneck=width), preprocessor=CHECKPOINT_NORMALISATION,
                    pipelines=('fgvc_train_crops', 'fgvc_test_crops'),
                    note=(f'width {width}, random-resized crops: the authors\' ({SOURCE} '
                          'fgvc/adapter_plus_dim1-32.yaml).'))

    def __init__(self, bottleneck=VTAB_WIDTH, position='post', scaling='channel', init='houlsby',
                 norm=False, drop_path=0.1, activation='gelu', **backbone):
        if 'placement' in backbone:
            raise ValueError('AdapterPlus has no option placement: position picks where the '
                             f'adapter sits, one of {tuple(POSITIONS)}')
        check_choices('AdapterPlus', position=(position, tuple(POSITIONS)), init=(init, INITS))
        if not (scaling in SCALINGS or isinstance(scaling, numbers.Real)
                and not isinstance(scaling, bool)):
            raise ValueError(f'AdapterPlus scaling={scaling!r}: choose one of {SCALINGS} or a '
                             'number (a fixed factor)')
        if not 0 <= drop_path < 1:
            raise ValueError(f'AdapterPlus drop_path={drop_path!r}: must be in [0, 1)')
        super().__init__(bottleneck=bottleneck, placement=(POSITIONS[position], ),
                         activation=activation, **backbone)
        self.position, self.scaling, self.init = position, scaling, init
        self.norm, self.drop_path = bool(norm), drop_path
        name = self.placement[0]
        self._init_projections(name)
        if scaling in SCALINGS:
            width = (lambda i, o: (o, )) if scaling == 'channel' else (lambda i, o: (1, ))
            self.op_parameter(f'{name}_scale', 'proj', width, nn.init.ones_)
        if self.norm:
            self.op_parameter(f'{name}_norm_weight', 'proj', lambda i, o: (o, ), nn.init.ones_)
            self.op_parameter(f'{name}_norm_bias', 'proj', lambda i, o: (o, ), nn.init.zeros_)

    def _init_projections(self, name):
        """Draws the projections Adapter made as ``init`` (every tensor, whatever Adapter's
        own init)."""
        def fill(tensor, init):
            for t in self.stage_tensors(getattr(self, f'{name}_{tensor}')):
                init(t.data)
        if self.init == 'lora':  # nn.Linear's down-projection and its bias, zero up
            fill('down_weight', kaiming_rows)
            for weight, bias in zip(self.stage_tensors(getattr(self, f'{name}_down_weight')),
                                    self.stage_tensors(getattr(self, f'{name}_down_bias'))):
                bound = weight.shape[-1] ** -0.5  # 1 / sqrt(fan in)
                nn.init.uniform_(bias.data, -bound, bound)
            fill('up_weight', nn.init.zeros_)
        else:
            for tensor in ('down_weight', 'up_weight'):
                fill(tensor, houlsby_normal if self.init == 'houlsby' else bert_normal)
            fill('down_bias', nn.init.zeros_)
        fill('up_bias', nn.init.zeros_)

    def branch(self, ctx, layer, name, x, out):
        if name not in self.placement:
            return out
        if self.position == 'intermediate':
            source = out
        elif self.position == 'parallel':
            source = x
        else:  # post / pre: the stream after this branch's residual sum
            source = x + out
        return out + self.adapter_output(ctx, layer, name, source)

    def adapter_output(self, ctx, layer, name, h):
        """s * drop_path(up(act(down(norm(h))))): what block ``layer``'s adapter adds."""
        if self.norm:
            h = F.layer_norm(h, h.shape[-1:], eps=NORM_EPS)
            h = (h * channelwise(ctx.per_sample(ctx.at(f'{name}_norm_weight', layer)), h)
                 + channelwise(ctx.per_sample(ctx.at(f'{name}_norm_bias', layer)), h))
        h = self.bottleneck_output(ctx, layer, name, h)
        if self.training and self.drop_path:
            keep = 1 - self.drop_path
            h = h * h.new_empty((h.shape[0], ) + (1, ) * (h.dim() - 1)).bernoulli_(keep).div_(keep)
        if isinstance(self.scaling, str):
            return h * channelwise(ctx.per_sample(ctx.at(f'{name}_scale', layer)), h)
        return h if self.scaling == 1 else h * self.scaling

    def extra_repr(self):
        return (f'bottleneck={self.bottleneck}, position={self.position!r}, '
                f'scaling={self.scaling!r}, init={self.init!r}, norm={self.norm}, '
                f'drop_path={self.drop_path}, activation={self.activation!r}')
