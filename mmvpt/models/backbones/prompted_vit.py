"""A timm VisionTransformer, frozen, run block by block with a prompt method plugged in."""
import torch
from timm.layers import Attention, resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer

from mmvpt.registry import MODELS

from ..utils.attention import run_op, self_attention
from ..utils.vit_checkpoint import load_vit_pretrained
from .base import PromptedBackbone, _mlp_dim

OUT_TYPES = ('cls_token', 'featmap', 'avg_featmap')


@MODELS.register_module()
class PromptedViT(PromptedBackbone):
    """A prompt-tuned ViT on top of timm's ``VisionTransformer``.

    The pretrained backbone is frozen (``frozen=True``) and ``prompt`` picks the method
    (``dict(type='mmvpt.VPT' | 'mmvpt.E2VPT' | 'mmvpt.CVPT' | 'mmvpt.IVPT', ...)``);
    ``prompt=None`` with ``frozen=True`` is linear probing, with ``frozen=False`` full
    fine-tuning.

    Args:
        arch: any timm ViT name, e.g. ``'vit_base_patch16_224'``, ``'vit_large_patch16_384'``,
            ``'vit_huge_patch14_224'``.
        img_size: training input size; the position embedding is stored for this grid and
            resized on the fly (``interpolate_mode``) for other input sizes.
        prompt: the prompt method config, or None.
        frozen: freeze every backbone weight.
        out_type: ``'cls_token'`` (classification: CLS after the final norm),
            ``'featmap'`` ((B, D, H/p, W/p) image-token maps, prompts stripped) or
            ``'avg_featmap'`` (mean of the image tokens; prompts never pooled).
        out_indices: blocks whose outputs are returned (negative counts from the end).
        final_norm: apply the final norm to the last block's output.
        interpolate_mode: position-embedding resize mode for other input sizes.
        drop_rate / drop_path_rate: dropout after the position embedding / stochastic depth
            of the (frozen) blocks.
        with_cp: gradient checkpointing: each block (with its prompt method's extension
            points) keeps only its input and is recomputed in backward.
        arch_cfg: extra keyword arguments for ``timm.create_model`` (e.g.
            ``dict(embed_dim=64, depth=2, num_heads=2)`` for a tiny test model).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads timm ``.pth`` /
            ``.safetensors``, Google ``.npz``, MAE and MoCo-v3 checkpoints.
    """

    timm_class = VisionTransformer

    def __init__(self, arch='vit_base_patch16_224', img_size=224, prompt=None, frozen=True,
                 out_type='cls_token', out_indices=-1, final_norm=True,
                 interpolate_mode='bicubic', drop_rate=0., drop_path_rate=0., with_cp=False,
                 arch_cfg=None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if out_type not in OUT_TYPES:
            raise ValueError(f'PromptedViT out_type={out_type!r}: choose one of {OUT_TYPES}')
        vit = self.create_timm_model(arch, img_size=img_size, drop_rate=drop_rate,
                                     drop_path_rate=drop_path_rate, **(arch_cfg or {}))
        self._check_supported(arch, vit)
        # Any input size: the position embedding is resized, and a size off the patch grid
        # (a slide-inference crop at an image border) is zero-padded at the bottom / right,
        # as mmseg's ViT does (padding='corner').
        vit.patch_embed.strict_img_size = False
        vit.patch_embed.dynamic_img_pad = True
        self.vit = vit
        self.arch = arch
        self.img_size = img_size
        self.frozen = frozen
        self.out_type = out_type
        self.final_norm = final_norm
        self.interpolate_mode = interpolate_mode
        self.with_cp = with_cp
        self.num_layers = len(vit.blocks)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.embed_dims = vit.embed_dim
        self.out_indices = self.check_out_indices(out_indices, self.num_layers, 'blocks')
        if out_type == 'cls_token' and vit.cls_token is None:
            raise ValueError(f'{arch} has no CLS token; use out_type="avg_featmap"')
        attn = vit.blocks[0].attn
        self.build_prompt(
            frozen, prompt, num_layers=self.num_layers, embed_dim=self.embed_dims,
            num_heads=attn.num_heads, patch_size=vit.patch_embed.patch_size[0],
            qkv_bias=attn.qkv.bias is not None, has_cls_token=vit.cls_token is not None,
            mlp_dim=[_mlp_dim(b) for b in vit.blocks])

    @property
    def timm_model(self):
        return self.vit

    @property
    def blocks(self):
        return self.vit.blocks

    @staticmethod
    def _check_supported(arch, vit):
        odd = {type(b).__name__ for b in vit.blocks if type(b) is not Block}
        odd |= {type(b.attn).__name__ for b in vit.blocks if type(b.attn) is not Attention}
        if odd:
            raise ValueError(f'PromptedViT arch={arch!r} uses {sorted(odd)}; prompt methods '
                             'plug into timm Block / Attention only')

    def load_pretrained(self, path):
        load_vit_pretrained(self.vit, path, interpolate_mode=self.interpolate_mode)

    # -- forward -------------------------------------------------------------------------
    def embed(self, img, op=None):
        """Patch + position embedding (resized for another grid), prefix tokens; the patch
        embedding through ``op`` (:meth:`op_of`)."""
        vit = self.vit
        B = img.shape[0]
        patch = vit.patch_embed.patch_size
        grid = (-(-img.shape[-2] // patch[0]), -(-img.shape[-1] // patch[1]))  # padded up
        x = self.embed_patches(img, op)
        pos_embed = vit.pos_embed
        if pos_embed is not None and tuple(grid) != tuple(vit.patch_embed.grid_size):
            pos_embed = resample_abs_pos_embed(
                pos_embed, new_size=grid, old_size=vit.patch_embed.grid_size,
                num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
                interpolation=self.interpolate_mode, antialias=False)
        prefix = [t.expand(B, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if pos_embed is None:
            x = torch.cat(prefix + [x], dim=1)
        elif vit.no_embed_class:
            x = torch.cat(prefix + [x + pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos_embed
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        return x, grid

    def attend(self, block, x, inputs):
        return self_attention(block.attn, x, inputs.before, inputs.after, inputs.key_mask,
                              inputs.cls_row, inputs.op)

    def plain_block(self, block, x, grid):
        return block(x)

    def sequence_keys(self, block, x, num_carried):
        return x.shape[1]

    def forward(self, img, tasks=None):
        """``tasks``: (B,) task index per sample when the method holds several tasks'
        tensors (``mmvpt.apis.MultiTaskModel``)."""
        ctx = self.start(img.shape[0], tasks)
        op = self.op_of(ctx, None)
        x, grid = self.embed(img, op)
        outs = []
        for i in range(self.out_indices[-1] + 1):  # later blocks would reach no output
            x = self.run_block(i, x, ctx, grid)
            if i == self.num_layers - 1 and self.final_norm:
                x = run_op(op, 'norm', self.vit.norm, x)
            if i in self.out_indices:
                outs.append(self._format(x, x.shape[1] - grid[0] * grid[1], grid))
        return tuple(outs)

    def _format(self, x, image_start, grid):
        if self.out_type == 'cls_token':
            return x[:, 0]
        image = x[:, image_start:]
        if self.out_type == 'avg_featmap':
            return image.mean(dim=1)
        B, _, C = image.shape
        return image.reshape(B, grid[0], grid[1], C).permute(0, 3, 1, 2).contiguous()

