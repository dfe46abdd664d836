"""Adapter+ as the authors' code runs it (Steitz and Roth, CVPR 2024; visinf/adapter_plus,
adapter_plus/vit_adapter.py: its ``Adapter`` and the ``forward_*`` of its ``AdapterBlock``),
restated in plain torch for the tests: one adapter module, and timm's own ViT and Swin blocks
run with an adapter at each of the paper's positions. Nothing here comes from mmvpt."""
import math

import torch
import torch.nn as nn
from timm.layers import DropPath

HOULSBY_STD = 0.01


class ReferenceAdapter(nn.Module):
    """``skip + s * drop_path(up(act(down(norm(x)))))``, as the authors' ``Adapter``:
    ``scaling`` is ``'channel'`` (a learned vector of ones), ``'learned'`` (one learned 1) or
    a number; ``init`` ``'houlsby'`` (both weights truncated normal, std 0.01 cut at +-0.02,
    zero biases), ``'lora'`` (nn.Linear's down, zero up) or ``'bert'`` (normal 0.02, zero
    biases)."""

    def __init__(self, dim, bottleneck=8, scaling='channel', init='houlsby', norm=False,
                 drop_path=0., activation=nn.GELU):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm else nn.Identity()
        self.down = nn.Linear(dim, bottleneck)
        self.act = activation()
        self.up = nn.Linear(bottleneck, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if scaling == 'channel':
            self.scaling = nn.Parameter(torch.ones(dim))
        elif scaling == 'learned':
            self.scaling = nn.Parameter(torch.ones(1))
        else:
            self.scaling = scaling
        if init == 'houlsby':
            for linear in (self.down, self.up):
                nn.init.trunc_normal_(linear.weight, std=HOULSBY_STD, a=-2 * HOULSBY_STD,
                                      b=2 * HOULSBY_STD)
                nn.init.zeros_(linear.bias)
        elif init == 'lora':
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.uniform_(self.down.bias, -dim ** -0.5, dim ** -0.5)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            for linear in (self.down, self.up):
                nn.init.normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def forward(self, x, skip=None):
        y = self.drop_path(self.up(self.act(self.down(self.norm(x))))) * self.scaling
        return y if skip is None else y + skip


def vit_block(block, adapter, x, position):
    """timm ViT ``block`` on ``x`` with ``adapter`` at ``position`` (the authors'
    ``forward_post`` / ``forward_pre`` / ``forward_parallel`` / ``forward_intermediate``)."""
    def attn(h):
        return block.drop_path1(block.ls1(block.attn(block.norm1(h))))

    def mlp(h):
        return block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
    if position == 'post':  # timm's whole block, then the adapter on its output
        y = block(x)
        return adapter(y, skip=y)
    if position == 'pre':
        x = x + attn(x)
        x = adapter(x, skip=x)
        return x + mlp(x)
    if position == 'parallel':
        y = x + attn(x)
        return adapter(y, skip=y + mlp(y))
    if position == 'intermediate':
        x = x + attn(x)
        y = mlp(x)
        return x + adapter(y, skip=y)
    raise ValueError(position)


def vit_features(vit, adapters, img, position='post'):
    """A timm VisionTransformer's CLS features after its final norm, an adapter per block."""
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(img))))
    for block, adapter in zip(vit.blocks, adapters):
        x = vit_block(block, adapter, x, position)
    return vit.norm(x)[:, 0]


def swin_features(swin, adapters, img):
    """A timm SwinTransformer's mean-pooled features after its final norm, an adapter after
    every block (Post-Adapter: timm's whole block, then the adapter on its output)."""
    x, adapters = swin.patch_embed(img), iter(adapters)
    for stage in swin.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            y = block(x)
            x = next(adapters)(y, skip=y)
    return swin.norm(x).mean(dim=(1, 2))
