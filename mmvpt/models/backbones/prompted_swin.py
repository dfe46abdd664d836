"""A timm SwinTransformer, frozen, run block by block with a prompt method plugged in."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
)

from mmvpt.registry import MODELS

from ..utils.attention import run_op, window_attention
from ..utils.swin_checkpoint import load_swin_pretrained
from .base import PromptedBackbone, _mlp_dim

OUT_TYPES = ('avg_featmap', 'featmap')


@MODELS.register_module()
class PromptedSwin(PromptedBackbone):
    """A prompt-tuned Swin Transformer on top of timm's ``SwinTransformer``.

    Same ``prompt=dict(type=...)`` interface as :class:`PromptedViT`; a method's layer l is
    Swin block l counted over all stages (Swin-B: 2 + 2 + 18 + 2 = 24), with that stage's
    width and heads. How the methods meet the windows:

    - prompt tokens (VPT, E²VPT visual, iVPT) join every window as keys and values, with
      the relative-position bias and the shifted-window mask zero-padded for them, so they
      are neither biased nor masked. A block's prompts are replaced by the next block's,
      so their outputs are computed only in the last block, and only when they are pooled.
      VPT-shallow's set instead passes through every block (its outputs averaged over the
      windows) and every patch merging (each prompt concatenated with itself four times
      goes through the merging's norm and reduction), as VPT's Swin code does.
    - ``pool_prompts=True`` (VPT's and E²VPT's Swin code): the pooled feature averages the
      final norm's output over the prompts (the last block's outputs, or VPT-shallow's
      carried set) and the image tokens; ``False`` pools image tokens only. Feature maps
      never hold prompts.
    - E²VPT key-value prompts join every window's keys and values the same way.
    - CVPT: every token cross-attends to the block's prompts over the whole map (no
      windows), with the block's window-attention projections (weight sharing).

    Args:
        arch: any timm Swin name, e.g. ``'swin_base_patch4_window7_224'`` (Swin-B).
        img_size: the size the windows and shifts are laid out for; other input sizes
            work too (attention masks are built for them).
        prompt: the prompt method config, or None (linear probing with ``frozen=True``,
            full fine-tuning with ``frozen=False``).
        frozen: freeze every backbone weight.
        out_type: ``'avg_featmap'`` (classification: mean of the tokens of the last output
            stage, after the final norm) or ``'featmap'`` ((B, C, H, W) image-token maps).
        out_indices: stages whose outputs are returned (negative counts from the end).
        final_norm: apply the final norm to the last stage's output.
        pool_prompts: ``avg_featmap`` averages over the prompt tokens too (see above).
        drop_path_rate: stochastic depth of the (frozen) blocks.
        with_cp: gradient checkpointing: each block (with its prompt method's extension
            points) keeps only its input and is recomputed in backward.
        arch_cfg: extra keyword arguments for ``timm.create_model`` (e.g.
            ``dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4)``).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)``: timm ``.pth`` /
            ``.safetensors`` and the official (Microsoft) Swin checkpoints, e.g. the
            ImageNet-22k Swin-B.
    """

    timm_class = SwinTransformer

    def __init__(self, arch='swin_base_patch4_window7_224', img_size=224, prompt=None,
                 frozen=True, out_type='avg_featmap', out_indices=-1, final_norm=True,
                 pool_prompts=True, drop_path_rate=0., with_cp=False, arch_cfg=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if out_type not in OUT_TYPES:
            raise ValueError(f'PromptedSwin out_type={out_type!r}: choose one of {OUT_TYPES}')
        swin = self.create_timm_model(arch, img_size=img_size, strict_img_size=False,
                                      drop_path_rate=drop_path_rate, **(arch_cfg or {}))
        self._check_supported(arch, swin)
        self.swin = swin
        self.arch = arch
        self.img_size = img_size
        self.frozen = frozen
        self.out_type = out_type
        self.final_norm = final_norm
        self.pool_prompts = pool_prompts
        self.with_cp = with_cp
        # a plain list (not registered again): block l over all stages
        self.blocks = [block for stage in swin.layers for block in stage.blocks]
        self.num_layers = len(self.blocks)
        self.num_stages = len(swin.layers)
        self.embed_dims = swin.num_features
        self.out_indices = self.check_out_indices(out_indices, self.num_stages, 'stages')
        #: {first block of a stage: the patch merging that starts it}, a plain dict
        self.patch_mergings = {}
        for index, stage in enumerate(swin.layers):
            if not isinstance(stage.downsample, nn.Identity):
                self.patch_mergings[
                    sum(len(s.blocks) for s in swin.layers[:index])] = stage.downsample
        self.build_prompt(
            frozen, prompt, num_layers=self.num_layers,
            embed_dim=[b.norm1.normalized_shape[0] for b in self.blocks],
            num_heads=[b.attn.num_heads for b in self.blocks],
            patch_size=swin.patch_embed.patch_size[0],
            qkv_bias=self.blocks[0].attn.qkv.bias is not None, has_cls_token=False,
            mlp_dim=[_mlp_dim(b) for b in self.blocks],
            patch_mergings=tuple((layer, m.norm.normalized_shape[0])
                                 for layer, m in self.patch_mergings.items()),
            position_bias_entries=[b.attn.relative_position_bias_table.shape[0]
                                   for b in self.blocks])

    @property
    def timm_model(self):
        return self.swin

    @property
    def prompt_outputs_layer(self):
        """The last block before the pooling, when the pooled feature averages its prompts."""
        if self.pool_prompts and self.out_type == 'avg_featmap':
            return sum(len(s.blocks) for s in self.swin.layers[:self.out_indices[-1] + 1]) - 1
        return None

    @staticmethod
    def _check_supported(arch, swin):
        odd = {type(b).__name__ for s in swin.layers for b in s.blocks
               if type(b) is not SwinTransformerBlock or type(b.attn) is not WindowAttention}
        odd |= {type(s.downsample).__name__ for s in swin.layers
                if type(s.downsample) not in (PatchMerging, nn.Identity)}
        if odd:
            raise ValueError(f'PromptedSwin arch={arch!r} uses {sorted(odd)}; prompt methods '
                             'plug into timm SwinTransformerBlock / WindowAttention / '
                             'PatchMerging only')

    def load_pretrained(self, path):
        load_swin_pretrained(self.swin, path)

    # -- forward -------------------------------------------------------------------------
    def attend(self, block, x, inputs):
        if inputs.cls_row:
            raise ValueError(f'{type(self.prompt).__name__} asks for the CLS attention row; '
                             'PromptedSwin has no CLS token')
        return window_attention(block, x, inputs.grid, inputs.before, inputs.after,
                                inputs.key_mask, inputs.num_carried, inputs.op), None

    def plain_block(self, block, x, grid):
        return block(x.unflatten(1, grid)).flatten(1, 2)

    def sequence_keys(self, block, x, num_carried):
        return num_carried + block.window_area  # a window's tokens and the carried prompts

    def forward(self, img, tasks=None):
        """``tasks``: (B,) task index per sample when the method holds several tasks'
        tensors (``mmvpt.apis.MultiTaskModel``)."""
        ctx = self.start(img.shape[0], tasks)
        op = self.op_of(ctx, None)
        x = self.embed_patches(img, op)  # (B, H, W, C)
        outs = []
        layer = 0
        prompts = None  # VPT-shallow's carried set, or the pooled last block's prompt outputs
        for index, stage in enumerate(self.swin.layers):
            x = merge_patches(stage.downsample, x, self.op_of(ctx, layer))
            B, H, W, C = x.shape
            seq = x.reshape(B, H * W, C)
            if prompts is not None:
                seq = torch.cat([merge_prompts(stage.downsample, prompts), seq], dim=1)
            for _ in stage.blocks:
                seq = self.run_block(layer, seq, ctx, (H, W))
                layer += 1
            num_prompts = seq.shape[1] - H * W
            prompts = seq[:, :num_prompts] if num_prompts else None
            x = seq[:, num_prompts:].reshape(B, H, W, C)
            if index == self.num_stages - 1 and self.final_norm:
                x = run_op(op, 'norm', self.swin.norm, x)
                prompts = None if prompts is None else run_op(op, 'norm', self.swin.norm, prompts)
            if index in self.out_indices:
                outs.append(self._pool(x, prompts if self.pool_prompts else None)
                            if self.out_type == 'avg_featmap'
                            else x.permute(0, 3, 1, 2).contiguous())
            if index == self.out_indices[-1]:
                break  # later stages would reach no output
        return tuple(outs)

    @staticmethod
    def _pool(x, prompts):
        """Mean of the (B, H, W, C) tokens, and of the ([B,] P, C) prompts if given."""
        B, _, _, C = x.shape
        if prompts is None:
            return x.mean(dim=(1, 2))
        return torch.cat([prompts.expand(B, -1, -1), x.reshape(B, -1, C)], dim=1).mean(dim=1)


def merge_patches(downsample, x, op):
    """A stage's patch merging on the (B, H, W, C) map: timm ``PatchMerging.forward``, its
    norm through ``op`` (:meth:`~PromptedBackbone.op_of`) as operation ``'merge_norm'``."""
    if op is None or isinstance(downsample, nn.Identity):
        return downsample(x)
    B, H, W, C = x.shape
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x = x.reshape(B, (H + 1) // 2, 2, (W + 1) // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
    return downsample.reduction(op('merge_norm', downsample.norm, x))


def merge_prompts(downsample, prompts):
    """Prompt tokens ([B,] P, C) through a stage's patch merging, as VPT's Swin does: each
    concatenated with itself four times (P, 4C), then the merging's norm and reduction."""
    if isinstance(downsample, torch.nn.Identity):  # the first stage merges nothing
        return prompts
    return downsample.reduction(downsample.norm(torch.cat([prompts] * 4, dim=-1)))
