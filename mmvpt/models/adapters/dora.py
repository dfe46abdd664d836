"""DoRA (Liu et al., ICML 2024): LoRA with the frozen weight decomposed into magnitude and
direction, W' = m (W + s B A) / ||W + s B A||, the norm per output row.

The magnitude m is learned, one value per output row, and starts at the frozen weight's row
norms ||W||, so the method starts as the model it tunes. Computed as Hugging Face peft
(0.17.1) computes ``LoraConfig(use_dora=True)`` on an ``nn.Linear``: the norm is a constant
to the gradient (the paper's §4.3), and the output is
``base(x) + (m / ||W + s B A|| - 1) W x + (m / ||W + s B A||) s B A x``, with the bias as it
was and, while training with dropout, W x taken again on the dropped-out input."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvpt.registry import MODELS

from ..utils.protocols import adamw_grid
from .base import channelwise
from .lora import LORA_TARGETS, LoRA, target_module, target_rows


@MODELS.register_module()
class DoRA(LoRA):
    """Weight-decomposed low-rank updates of the frozen linears.

    Args:
        rank, alpha, targets, dropout: as :class:`~mmvpt.models.adapters.lora.LoRA`'s.
    """
    display_name = 'DoRA'
    #: tools/protocol.py: no source gives a DoRA recipe for VTAB-1k or FGVC
    protocol = adamw_grid('our AdamW grid', 'no source gives a DoRA recipe for VTAB-1k or FGVC')
    config_folder = 'dora'
    table_order = 75  # right after LoRA
    benchmark_rows = {'dora': (' (r=8, q v)', dict(rank=8, targets=('q', 'v')))}
    tiny_settings = {'dora': dict(rank=2, targets=('q', 'v', 'fc1'), dropout=0.1)}
    #: the magnitudes of every possible target; an instance narrows it to its targets
    derived_from_frozen = tuple(f'magnitude_{target}' for target in LORA_TARGETS)

    @classmethod
    def config_recipe(cls, benchmark, task):
        return dict(note="lr 1e-3, wd 1e-4, batch 64: our default (LoRA's NOAH recipe); no source "
                    'gives a DoRA recipe for VTAB-1k or FGVC.')

    def __init__(self, rank=8, alpha=None, targets=('q', 'v'), dropout=0., **backbone):
        super().__init__(rank=rank, alpha=alpha, targets=targets, dropout=dropout, **backbone)
        for target in self.targets:  # set from the frozen weights by derive_from_frozen
            self.op_parameter(f'magnitude_{target}', target, lambda i, o: (o, ), nn.init.ones_)
        self.derived_from_frozen = tuple(f'magnitude_{target}' for target in self.targets)

    @torch.no_grad()
    def derive_from_frozen(self, backbone):
        # peft's init: m = ||W + s B A|| per output row, ||W|| for a new update (B = 0)
        for layer in range(self.num_layers):
            for target in self.targets:
                module = target_module(backbone, layer, target)
                frozen = module.weight[target_rows(module, target)]
                weight = super().merged_weight(layer, target, frozen)
                magnitude = self.layer_of(getattr(self, f'magnitude_{target}'), layer)
                magnitude.copy_(torch.linalg.vector_norm(weight, dim=-1))

    def changed(self, ctx, layer, target, module, x, out):
        rows = target_rows(module, target)
        weight = module.weight[rows]
        a, b = ctx.at(f'lora_a_{target}', layer), ctx.at(f'lora_b_{target}', layer)  # per task
        # ||W + s B A|| per task and output row, a constant to the gradient
        norm = torch.linalg.vector_norm(
            weight.detach() + self.scale * (b.detach() @ a.detach()), dim=-1)  # (T, out)
        scale = channelwise(ctx.per_sample(ctx.at(f'magnitude_{target}', layer) / norm), out)
        if self.training and self.dropout:  # as peft: W x again, on the dropped-out input
            x = F.dropout(x, self.dropout, True)
            frozen = F.linear(x, weight.to(x.dtype))
        else:  # W x is the frozen output less its bias
            frozen = out if module.bias is None else out - module.bias[rows].to(out.dtype)
        return out + (scale - 1) * frozen + scale * self.update(ctx, layer, target, x)

    def merged_weight(self, layer, target, weight):
        # W' = m / ||W + s B A|| (W + s B A); the bias stays
        weight = super().merged_weight(layer, target, weight)
        magnitude = self.layer_of(getattr(self, f'magnitude_{target}'), layer).to(weight)
        return (magnitude / torch.linalg.vector_norm(weight, dim=-1)).unsqueeze(-1) * weight
