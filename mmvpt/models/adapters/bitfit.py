"""BitFit (Ben Zaken et al., ACL 2022): the frozen model's bias terms are the tuned tensors.

Each is held as a change (zero at the start) added to its operation's output: for a linear
or a norm, W x + b + d is the operation with bias b + d, so the frozen weights stay shared
(several tasks on one backbone) and merging is b += d."""
import torch
import torch.nn as nn

from mmvpt.registry import MODELS
from .base import BLOCK_OPS, GLOBAL_OPS, AdapterMethod, channelwise, fold_affine, op_module


@MODELS.register_module()
class BitFit(AdapterMethod):
    """Tunes the biases of the patch embedding, of each block's norm1, qkv (where it has a
    bias), proj, norm2, fc1 and fc2, and of the final norm. On Swin the patch embedding's
    tuned bias is that of its norm, its last operation."""
    display_name = 'BitFit'
    adapts_ops = True

    def __init__(self, **backbone):
        super().__init__(**backbone)
        self.ops = tuple(op for op in BLOCK_OPS if op != 'qkv' or self.qkv_bias)
        for op in self.ops:
            self.op_parameter(f'bias_{op}', op, lambda i, o: (o, ), nn.init.zeros_)
        self.bias_patch_embed = nn.Parameter(torch.zeros(self.layer_dims[0]))
        self.bias_norm = nn.Parameter(torch.zeros(self.layer_dims[-1]))

    def adapt(self, ctx, layer, name, module, x):
        out = module(x)
        if layer is None:
            delta = self.global_per_sample(ctx, getattr(self, f'bias_{name}'))
        elif name in self.ops:
            delta = self.per_sample(ctx, f'bias_{name}', layer)
        else:
            return out
        return out + channelwise(delta, out)

    def merge_into(self, backbone):
        for op in GLOBAL_OPS:
            fold_affine(op_module(backbone, None, op), shift=getattr(self, f'bias_{op}'))
        for op in self.ops:
            for layer in range(self.num_layers):
                fold_affine(op_module(backbone, layer, op), shift=self.at(getattr(self, f'bias_{op}'), layer))
