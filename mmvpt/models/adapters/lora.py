"""LoRA (Hu et al., ICLR 2022): a low-rank update B A of frozen projections, W x + s B A x.

On the query and value rows of each block's fused qkv projection by default, the setting of
the VTAB-1k tables; ``'qkv'`` updates the fused projection as one linear (what Hugging Face
peft does when pointed at a timm ViT's ``qkv``), and ``'proj'``, ``'fc1'``, ``'fc2'`` the
other linears."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvpt.registry import MODELS

from ..prompts.base import check_positive
from ..utils.protocols import adamw_grid, fixed_recipe
from .base import QKV_ROWS, AdapterMethod, kaiming_rows, noah_recipe, op_module

LORA_TARGETS = QKV_ROWS + ('qkv', 'proj', 'fc1', 'fc2')


@MODELS.register_module()
class LoRA(AdapterMethod):
    """Low-rank updates of the frozen linears.

    Args:
        rank: r, the inner width of each update.
        alpha: the update is scaled by alpha / r (default: alpha = r, scale 1).
        targets: which linears: ``'q'``, ``'k'``, ``'v'`` (rows of qkv, each its own
            update), ``'qkv'`` (the fused projection as one), ``'proj'``, ``'fc1'``,
            ``'fc2'``.
        dropout: dropout on the update's input (peft's ``lora_dropout``).
    """
    display_name = 'LoRA'
    #: tools/protocol.py: NOAH's one VTAB-1k recipe for every task; no source gives an FGVC one
    protocol = dict(
        vtab=fixed_recipe("NOAH's VTAB-1k LoRA recipe",
                          'ZhangYuanhan-AI/NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh'),
        fgvc=adamw_grid('our AdamW grid', 'no source gives a LoRA FGVC recipe'))
    config_folder = 'lora'
    table_order = 70
    benchmark_rows = {'lora': (' (r=8, q v)', dict(rank=8, targets=('q', 'v')))}
    tiny_settings = {'lora': dict(rank=2, targets=('q', 'v', 'fc1'), dropout=0.1)}

    @classmethod
    def config_recipe(cls, benchmark, task):
        return noah_recipe(cls.display_name, benchmark)
    adapts_ops = True

    def __init__(self, rank=8, alpha=None, targets=('q', 'v'), dropout=0., **backbone):
        super().__init__(**backbone)
        check_positive('rank', rank)
        targets = (targets, ) if isinstance(targets, str) else tuple(targets)
        unknown = [t for t in targets if t not in LORA_TARGETS]
        name = type(self).__name__  # DoRA's errors name DoRA
        if unknown or not targets or len(set(targets)) != len(targets):
            raise ValueError(f'{name} targets={targets!r}: name distinct linears among '
                             f'{LORA_TARGETS}')
        if 'qkv' in targets and set(targets) & set(QKV_ROWS):
            raise ValueError(f'{name} targets={targets!r}: \'qkv\' already updates the q, k and '
                             'v rows')
        if not 0 <= dropout < 1:
            raise ValueError(f'{name} dropout={dropout!r}: must be in [0, 1)')
        self.rank = rank
        self.alpha = rank if alpha is None else alpha
        self.scale = self.alpha / rank
        self.targets = targets
        self.dropout = dropout
        for target in targets:  # A random, B zero: the update starts at zero
            self.op_parameter(f'lora_a_{target}', target, lambda i, o: (rank, i), kaiming_rows)
            self.op_parameter(f'lora_b_{target}', target, lambda i, o: (o, rank), nn.init.zeros_)

    def update(self, ctx, layer, target, x):
        """s B A x for block ``layer``'s ``target`` on ``x`` (B, ..., in)."""
        a = ctx.per_sample(ctx.at(f'lora_a_{target}', layer))  # (B | 1, r, in)
        b = ctx.per_sample(ctx.at(f'lora_b_{target}', layer))  # (B | 1, out, r)
        shape = x.shape
        h = x.reshape(shape[0], -1, shape[-1]) @ a.transpose(-1, -2).to(x.dtype)
        return ((h @ b.transpose(-1, -2).to(x.dtype)) * self.scale).view(*shape[:-1], -1)

    def adapt(self, ctx, layer, name, module, x):
        out = module(x)
        if layer is None:
            return out
        if name == 'qkv' and any(t in self.targets for t in QKV_ROWS):
            rows = list(out.chunk(3, dim=-1))
            for index, target in enumerate(QKV_ROWS):
                if target in self.targets:
                    rows[index] = self.changed(ctx, layer, target, module, x, rows[index])
            return torch.cat(rows, dim=-1)
        if name in self.targets:
            return self.changed(ctx, layer, name, module, x, out)
        return out

    def changed(self, ctx, layer, target, module, x, out):
        """``out``, the frozen output of ``target`` (its rows of ``module``, the qkv projection,
        for ``'q'``, ``'k'``, ``'v'``) on ``x``, changed by the method: out + s B A x."""
        x = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return out + self.update(ctx, layer, target, x)

    def merged_weight(self, layer, target, weight):
        """``weight`` (the rows of block ``layer``'s frozen ``target``) with the method folded
        in: W + s B A."""
        a, b = (self.layer_of(getattr(self, f'lora_{p}_{target}'), layer) for p in 'ab')
        return weight + (self.scale * b @ a).to(weight)

    def merge_into(self, backbone):
        for layer in range(self.num_layers):
            for target in self.targets:
                module = target_module(backbone, layer, target)
                rows = target_rows(module, target)
                module.weight[rows] = self.merged_weight(layer, target, module.weight[rows])

    def extra_repr(self):
        return f'rank={self.rank}, alpha={self.alpha}, targets={self.targets}'


def target_module(backbone, layer, target):
    """The frozen linear of block ``layer`` that ``target`` changes (the qkv projection for
    ``'q'``, ``'k'``, ``'v'``)."""
    return op_module(backbone, layer, 'qkv' if target in QKV_ROWS else target)


def target_rows(module, target):
    """The output rows of ``module`` (:func:`target_module`) that ``target`` changes: its
    third of the qkv projection for ``'q'``, ``'k'``, ``'v'``, else all of them."""
    if target not in QKV_ROWS:
        return slice(None)
    width = module.out_features // 3
    start = QKV_ROWS.index(target) * width
    return slice(start, start + width)
