"""What the adapter-style methods share: per-layer tensors sized by the frozen operation they
change, and reading them per task and sample through the forward's context.

They plug into the same backbones as the prompt methods, through two more extension points
of :class:`~mmvpt.models.prompts.base.PromptMethod`: ``adapt`` (the output of a frozen
operation: LoRA, SSF, BitFit) and ``branch`` (a block branch's output: Adapter,
AdaptFormer)."""
import math
from functools import partial

import torch
import torch.nn as nn

from ..prompts.base import PromptMethod, each_layer

#: the frozen operations of a block, in the order they run
BLOCK_OPS = ('norm1', 'qkv', 'proj', 'norm2', 'fc1', 'fc2')
#: the operations outside the blocks: the patch projection (only where the patch embedding
#: normalises it: Swin), the patch embedding, the norm of each patch merging (Swin; ``layer``
#: in ``adapt``: the first block of the stage it starts, else None) and the final norm
OUTER_OPS = ('patch_proj', 'patch_embed', 'merge_norm', 'norm')
#: the query, key and value rows of the fused qkv projection, as LoRA targets
QKV_ROWS = ('q', 'k', 'v')
#: NOAH's one VTAB-1k recipe of its LoRA and Adapter baselines (ZhangYuanhan-AI/NOAH,
#: configs/{LoRA,Adapter}/VTAB/slurm_train_*_vtab.sh): AdamW, batch 64, 100 epochs, rank /
#: width 8; warm-up 10 epochs and drop-path 0.1 are supernet_train_prompt.py's defaults
NOAH_VTAB = dict(lr=1e-3, weight_decay=1e-4, batch=64)


def noah_recipe(name, benchmark):
    """The generated config of a method run with NOAH's VTAB-1k recipe (no FGVC one)."""
    if benchmark != 'vtab':
        return dict(note="lr 1e-3, wd 1e-4, batch 64: NOAH's VTAB-1k recipe as our default; no "
                    "source gives FGVC's.")
    lr, wd, batch = NOAH_VTAB['lr'], NOAH_VTAB['weight_decay'], NOAH_VTAB['batch']
    return dict(optimizer=dict(lr=lr, weight_decay=wd), loader=dict(batch_size=batch),
                note=f"lr {lr:g}, wd {wd:g}, batch {batch} (NOAH's VTAB-1k {name} script).")


def op_module(backbone, layer, name):
    """The frozen module of operation ``name`` of block ``layer`` (see :data:`OUTER_OPS`
    for the others)."""
    if name == 'patch_proj':
        return backbone.timm_model.patch_embed.proj
    if name == 'merge_norm':
        return backbone.patch_mergings[layer].norm
    if layer is None:
        return getattr(backbone.timm_model, name)
    block = backbone.blocks[layer]
    return {'norm1': block.norm1, 'qkv': block.attn.qkv, 'proj': block.attn.proj,
            'norm2': block.norm2, 'fc1': block.mlp.fc1, 'fc2': block.mlp.fc2}[name]


def last_affine(module):
    """The module whose weight and bias make ``module``'s output last: a timm PatchEmbed's
    norm (Swin) or projection (ViT), else the module (a linear, conv or norm) itself."""
    if hasattr(module, 'proj') and hasattr(module, 'norm'):  # timm PatchEmbed
        return module.proj if isinstance(module.norm, nn.Identity) else module.norm
    return module


def fold_affine(module, scale=None, shift=None):
    """Makes ``module(x) * scale + shift`` (per output channel) the module's own output, by
    changing the weight and bias of its :func:`last_affine` operation."""
    target = last_affine(module)
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
    ``per_layer``, so the forward reads it as ``ctx.at(name, layer)`` with a task axis
    (``ctx.per_sample`` gathers it per sample)."""

    def __init__(self, **backbone):
        super().__init__(**backbone)
        self.per_layer = ()  # filled by op_parameter; an instance attribute

    def merge_into(self, backbone):
        """Folds the method into ``backbone``'s frozen weights, so that the plain model
        computes what the method does (:meth:`PromptedBackbone.merge_method`)."""
        raise NotImplementedError(
            f'{type(self).__name__} cannot be merged into the frozen weights: '
            f'{self.why_not_mergeable}')

    #: why :meth:`merge_into` is not possible, for a method that keeps its own modules
    why_not_mergeable = 'its bottleneck applies a non-linearity to its input'

    def op_widths(self, op, layer):
        """(input width, output width) of operation ``op`` of block ``layer``; ``'q'``,
        ``'k'``, ``'v'``: one third of the qkv projection; ``'position_bias'``: its table's
        (entries, heads)."""
        if op == 'position_bias':
            return self.position_bias_entries[layer], self.layer_heads[layer]
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
        weight = ctx.per_sample(ctx.at(f'{prefix}_weight', layer)).to(x.dtype)  # (B | 1, out, in)
        bias = ctx.per_sample(ctx.at(f'{prefix}_bias', layer)).to(x.dtype)  # (B | 1, out)
        return x @ weight.transpose(-1, -2) + bias.unsqueeze(-2)

    # -- one vector per output channel of chosen operations, inside and outside the blocks
    def backbone_ops(self):
        """The operations this backbone runs through ``adapt``, outside the blocks first."""
        absent = {'patch_proj': not self.patch_norm, 'merge_norm': not self.patch_mergings}
        return tuple(op for op in OUTER_OPS if not absent.get(op)) + BLOCK_OPS

    def op_layers(self, op):
        """The ``layer`` values ``adapt`` is asked ``op`` with."""
        if op in BLOCK_OPS:
            return range(self.num_layers)
        return [layer for layer, _ in self.patch_mergings] if op == 'merge_norm' else [None]

    def channel_parameter(self, name, op, init):
        """Registers ``name``: a vector over ``op``'s output channels per place it runs
        (per block as :meth:`op_parameter`; a list, one per patch merging; or one)."""
        if op in BLOCK_OPS:
            return self.op_parameter(name, op, lambda i, o: (o, ), init)
        if op == 'merge_norm':
            setattr(self, name,
                    nn.ParameterList(_vector(width, init) for _, width in self.patch_mergings))
        else:
            setattr(self, name, _vector(self.layer_dims[-1 if op == 'norm' else 0], init))

    def channel_vector(self, name, op, layer, ctx=None):
        """The vector ``name`` of ``op`` at ``layer``: per sample, (B | 1, C), with the
        forward's ``ctx``; else as held (for merging)."""
        if op in BLOCK_OPS:
            if ctx is None:
                return self.layer_of(getattr(self, name), layer)
            return ctx.per_sample(ctx.at(name, layer))
        vector = getattr(self, name)
        if op == 'merge_norm':
            vector = vector[[first for first, _ in self.patch_mergings].index(layer)]
        return vector if ctx is None else ctx.per_sample(self.with_task_axis(vector))


def channelwise(t, x):
    """A (B | 1, C) tensor shaped to broadcast over the channels of ``x`` (B, ..., C), in
    ``x``'s dtype: under autocast a float32 scale or shift would promote the bfloat16 output
    (and every op after it) to float32."""
    return t.view(t.shape[0], *([1] * (x.dim() - 2)), t.shape[-1]).to(x.dtype)


#: nn.Linear's (and peft's LoRA A) weight init, kaiming-uniform with a = sqrt(5), per (out, in)
#: layer slice of a per-layer tensor
kaiming_rows = each_layer(partial(nn.init.kaiming_uniform_, a=math.sqrt(5)))


def _vector(width, init):
    t = torch.empty(width)
    init(t)
    return nn.Parameter(t)


class ChannelAffine(AdapterMethod):
    """``out * scale + shift`` per output channel of chosen frozen operations, each place
    its own vectors: SSF (scale and shift), BitFit (a shift: the change of the bias).
    Affine in the frozen operation, so it folds into its weight and bias.

    A subclass names its tensors: ``scale_init`` (None: no scale) and ``shift_prefix`` /
    ``shift_init``; tensors are ``{prefix}_{op}``.
    """
    adapts_ops = True
    scale_init = None
    shift_prefix = 'shift'
    shift_init = staticmethod(nn.init.zeros_)

    def __init__(self, ops=None, **backbone):
        super().__init__(**backbone)
        # those the backbone has (None: all), in the order they run
        self.ops = tuple(op for op in self.backbone_ops() if ops is None or op in ops)
        for op in self.ops:
            if self.scale_init is not None:
                self.channel_parameter(f'scale_{op}', op, self.scale_init)
            self.channel_parameter(f'{self.shift_prefix}_{op}', op, self.shift_init)

    def adapt(self, ctx, layer, name, module, x):
        out = module(x)
        if name not in self.ops:
            return out
        if self.scale_init is not None:
            out = out * channelwise(self.channel_vector(f'scale_{name}', name, layer, ctx), out)
        return out + channelwise(
            self.channel_vector(f'{self.shift_prefix}_{name}', name, layer, ctx), out)

    def merge_into(self, backbone):
        # (W x + b) * scale + shift = (scale W) x + (scale b + shift)
        for op in self.ops:
            for layer in self.op_layers(op):
                scale = (None if self.scale_init is None
                         else self.channel_vector(f'scale_{op}', op, layer))
                fold_affine(op_module(backbone, layer, op), scale,
                            self.channel_vector(f'{self.shift_prefix}_{op}', op, layer))

    def extra_repr(self):
        return f'ops={self.ops}'
