"""SSF (Lian et al., NeurIPS 2022): a learnable scale and shift, y * gamma + beta, after every
operation of the frozen model: the patch embedding, each block's norm1, qkv, proj, norm2, fc1
and fc2, and the final norm (where the authors' ViT applies them)."""
import torch
import torch.nn as nn

from mmvpt.registry import MODELS
from .base import BLOCK_OPS, GLOBAL_OPS, AdapterMethod, channelwise, fold_affine, op_module

SSF_OPS = GLOBAL_OPS + BLOCK_OPS


def ssf_scale(tensor):
    nn.init.normal_(tensor, mean=1., std=.02)


def ssf_shift(tensor):
    nn.init.normal_(tensor, std=.02)


def _vector(width, init):
    t = torch.empty(width)
    init(t)
    return nn.Parameter(t)


@MODELS.register_module()
class SSF(AdapterMethod):
    """Scale and shift every frozen operation's output channels.

    Args:
        ops: the operations to scale and shift (default: all of :data:`SSF_OPS`).
    """
    display_name = 'SSF'
    adapts_ops = True

    def __init__(self, ops=SSF_OPS, **backbone):
        super().__init__(**backbone)
        ops = tuple(ops)
        unknown = [op for op in ops if op not in SSF_OPS]
        if unknown or not ops:
            raise ValueError(f'SSF ops={ops!r}: choose among {SSF_OPS}')
        self.ops = ops
        for op in ops:
            if op in BLOCK_OPS:
                self.op_parameter(f'scale_{op}', op, lambda i, o: (o, ), ssf_scale)
                self.op_parameter(f'shift_{op}', op, lambda i, o: (o, ), ssf_shift)
        width = {'patch_embed': self.layer_dims[0], 'norm': self.layer_dims[-1]}
        for op in GLOBAL_OPS:
            setattr(self, f'scale_{op}', _vector(width[op], ssf_scale) if op in ops else None)
            setattr(self, f'shift_{op}', _vector(width[op], ssf_shift) if op in ops else None)

    def adapt(self, ctx, layer, name, module, x):
        out = module(x)
        if name not in self.ops:
            return out
        if layer is None:
            scale = self.global_per_sample(ctx, getattr(self, f'scale_{name}'))
            shift = self.global_per_sample(ctx, getattr(self, f'shift_{name}'))
        else:
            scale = self.per_sample(ctx, f'scale_{name}', layer)
            shift = self.per_sample(ctx, f'shift_{name}', layer)
        return out * channelwise(scale, out) + channelwise(shift, out)

    def merge_into(self, backbone):
        # (W x + b) * gamma + beta = (gamma W) x + (gamma b + beta)
        for op in self.ops:
            layers = [None] if op in GLOBAL_OPS else range(self.num_layers)
            for layer in layers:
                if layer is None:
                    scale, shift = getattr(self, f'scale_{op}'), getattr(self, f'shift_{op}')
                else:
                    scale, shift = (self.at(getattr(self, f'{p}_{op}'), layer) for p in ('scale', 'shift'))
                fold_affine(op_module(backbone, layer, op), scale, shift)

    def extra_repr(self):
        return f'ops={self.ops}'
