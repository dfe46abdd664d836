"""What the adapter-style methods share: per-layer tensors sized by the frozen operation they
change, and reading them per task and sample through the forward's context.

They plug into the same backbones as the prompt methods, through two more extension points
of :class:`~mmvpt.models.prompts.base.PromptMethod`: ``adapt`` (the output of a frozen
operation: LoRA, SSF, BitFit) and ``branch`` (a block branch's output: Adapter,
AdaptFormer)."""
import math

import torch
import torch.nn as nn

from ..prompts.base import PromptMethod

#: the frozen operations of a block, in the order they run
BLOCK_OPS = ('norm1', 'qkv', 'proj', 'norm2', 'fc1', 'fc2')
#: the operations outside the blocks (``layer`` None in ``adapt``)
GLOBAL_OPS = ('patch_embed', 'norm')
#: the query, key and value rows of the fused qkv projection, as LoRA targets
QKV_ROWS = ('q', 'k', 'v')


def op_module(backbone, layer, name):
    """The frozen module of operation ``name`` of block ``layer`` (``layer`` None: the
    patch embedding or the final norm)."""
    if layer is None:
        return getattr(backbone.timm_model, name)
    block = backbone.blocks[layer]
    return {'norm1': block.norm1, 'qkv': block.attn.qkv, 'proj': block.attn.proj,
            'norm2': block.norm2, 'fc1': block.mlp.fc1, 'fc2': block.mlp.fc2}[name]


def fold_affine(module, scale=None, shift=None):
    """Makes ``module(x) * scale + shift`` (per output channel) the module's own output, by
    changing the weight and bias of its last affine operation: a timm PatchEmbed's norm
    (Swin) or projection (ViT), else the module (a linear or a norm) itself."""
    target = module
    if hasattr(module, 'proj') and hasattr(module, 'norm'):  # timm PatchEmbed
        target = module.proj if isinstance(module.norm, nn.Identity) else module.norm
    weight = target.weight
    if scale is not None:
        scale = scale.to(weight)
        weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
        if target.bias is not None:
            target.bias.mul_(scale)
    if shift is not None:
        if target.bias is None:  # a linear without bias gets one
            target.bias = nn.Parameter(shift.to(weight).clone(), requires_grad=weight.requires_grad)
        else:
            target.bias.add_(shift.to(weight))


class AdapterMethod(PromptMethod):
    """Base of the methods that change the frozen blocks' operations rather than add
    tokens. ``op_parameter`` makes a per-layer tensor for an operation of every block
    (one parameter per stage of equal widths, as ``stage_parameter``) and lists it in
    ``per_layer``, so the forward reads it as ``ctx.at(name, layer)`` with a task axis."""

    def __init__(self, **backbone):
        super().__init__(**backbone)
        self.per_layer = ()  # filled by op_parameter; an instance attribute

    def merge_into(self, backbone):
        """Folds the method into ``backbone``'s frozen weights, so that the plain model
        computes what the method does (:meth:`PromptedBackbone.merge_method`)."""
        raise NotImplementedError(
            f'{type(self).__name__} cannot be merged into the frozen weights: {self.why_not_mergeable}')

    #: why :meth:`merge_into` is not possible, for a method that keeps its own modules
    why_not_mergeable = 'its bottleneck applies a non-linearity to its input'

    def op_widths(self, op, layer):
        """(input width, output width) of operation ``op`` of block ``layer``; ``'q'``,
        ``'k'``, ``'v'``: one third of the qkv projection."""
        dim, mlp = self.layer_dims[layer], self.layer_mlp_dims[layer]
        return {'norm1': (dim, dim), 'qkv': (dim, 3 * dim), 'q': (dim, dim), 'k': (dim, dim),
                'v': (dim, dim), 'proj': (dim, dim), 'norm2': (dim, dim), 'fc1': (dim, mlp),
                'fc2': (mlp, dim)}[op]

    def op_parameter(self, name, op, shape, init):
        """Registers ``name``: a tensor of shape ``shape(in_width, out_width)`` of ``op`` per
        block (see :meth:`stage_parameter`), filled by ``init(tensor)``."""
        tensors = []
        for start, end in self.stages:
            t = nn.Parameter(torch.empty(end - start, *shape(*self.op_widths(op, start))))
            init(t.data)
            tensors.append(t)
        setattr(self, name, tensors[0] if len(tensors) == 1 else nn.ParameterList(tensors))
        self.per_layer = self.per_layer + (name, )

    def linear(self, ctx, layer, prefix, x):
        """``x`` (B, N, in) through block ``layer``'s ``{prefix}_weight`` (out, in) and
        ``{prefix}_bias`` (out), each sample with its task's."""
        weight = self.per_sample(ctx, f'{prefix}_weight', layer).to(x.dtype)  # (B | 1, out, in)
        bias = self.per_sample(ctx, f'{prefix}_bias', layer).to(x.dtype)  # (B | 1, out)
        return x @ weight.transpose(-1, -2) + bias.unsqueeze(-2)

    def per_sample(self, ctx, name, layer):
        """Block ``layer``'s ``name`` tensor per sample: (B, ...), or (1, ...) broadcasting
        over the batch with one task."""
        return ctx.per_sample(ctx.at(name, layer))

    def global_per_sample(self, ctx, param):
        """A tensor of an operation outside the blocks per sample: (B | 1, ...)."""
        return ctx.per_sample(self.with_task_axis(param))


def channelwise(t, x):
    """A (B | 1, C) tensor shaped to broadcast over the channels of ``x`` (B, ..., C), in
    ``x``'s dtype: under autocast a float32 scale or shift would promote the bfloat16 output
    (and every op after it) to float32."""
    return t.view(t.shape[0], *([1] * (x.dim() - 2)), t.shape[-1]).to(x.dtype)


def kaiming_rows(tensor):
    """nn.Linear's (and peft's LoRA A) weight init, kaiming-uniform with a = sqrt(5), per
    (out, in) layer slice of a per-layer tensor."""
    for layer in tensor:
        nn.init.kaiming_uniform_(layer, a=math.sqrt(5))
