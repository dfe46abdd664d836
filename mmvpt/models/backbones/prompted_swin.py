"""A timm SwinTransformer, frozen, run block by block with a prompt method plugged in."""
from functools import partial

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention
from torch.utils.checkpoint import checkpoint

from mmvpt.registry import MODELS
from ..utils.attention import join_kv, project_kv, window_attention
from ..utils.block import residual_block
from ..utils.swin_checkpoint import load_swin_pretrained
from .base import PromptedBackbone

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
        self.build_prompt(
            frozen, prompt, num_layers=self.num_layers,
            embed_dim=[b.norm1.normalized_shape[0] for b in self.blocks],
            num_heads=[b.attn.num_heads for b in self.blocks],
            patch_size=swin.patch_embed.patch_size[0],
            qkv_bias=self.blocks[0].attn.qkv.bias is not None, has_cls_token=False)

    @property
    def timm_model(self):
        return self.swin

    @staticmethod
    def _check_supported(arch, swin):
        odd = {type(b).__name__ for s in swin.layers for b in s.blocks
               if type(b) is not SwinTransformerBlock or type(b.attn) is not WindowAttention}
        if odd:
            raise ValueError(f'PromptedSwin arch={arch!r} uses {sorted(odd)}; prompt methods '
                             'plug into timm SwinTransformerBlock / WindowAttention only')

    def load_pretrained(self, path):
        load_swin_pretrained(self.swin, path)

    # -- forward -------------------------------------------------------------------------
    def forward_block(self, layer, x, carried=None, ctx=None, prompt_outputs=False):
        """Block ``layer`` on (B, H, W, C) tokens; ``carried`` is VPT-shallow's (b, P, C)
        prompt set or None. Returns both, updated. ``prompt_outputs``: compute the outputs
        of this block's own prompts too (they are pooled), not only their keys/values."""
        block, method = self.blocks[layer], self.prompt
        tokens = method.tokens(ctx, layer)
        attended = attended_mask = None
        if tokens is not None and (method.carries_prompts or prompt_outputs):
            if method.prompt_mask(ctx, layer) is not None:
                raise NotImplementedError(
                    f'{type(method).__name__}: tasks with differently pruned prompts whose outputs '
                    'are used (pooled or carried) cannot share a batch')
            carried = method.for_samples(ctx, tokens)
        elif tokens is not None:
            attended = tokens
            attended_mask = method.for_samples(ctx, method.prompt_mask(ctx, layer))
        kv = method.for_samples(ctx, method.kv(ctx, layer))
        B, H, W, C = x.shape
        extra_mask = None
        if attended_mask is not None:  # extra keys: [KV prompts, prompts]
            extra_mask = torch.cat([attended_mask.new_ones(B, 0 if kv is None else kv[0].shape[-2]),
                                    attended_mask], dim=1)
        P = 0 if carried is None else carried.shape[1]
        seq = x.reshape(B, H * W, C)
        if P:
            seq = torch.cat([carried.expand(B, -1, -1), seq], dim=1)

        def attention(h):
            h = block.norm1(h)
            extra = join_kv(kv, None if attended is None else method.for_samples(  # per task, then per sample
                ctx, project_kv(block.attn, block.norm1(attended))))
            out, prompt_out = window_attention(block, h[:, P:].reshape(B, H, W, C), extra,
                                               method.kv_first, h[:, :P] if P else None, extra_mask)
            out = out.reshape(B, H * W, C)
            return block.drop_path1(out if not P else torch.cat([prompt_out, out], dim=1))

        seq = residual_block(
            seq, attention, block.norm2, lambda h: block.drop_path2(block.mlp(h)),
            lambda h: method.cross_attend(ctx, layer, h, block.attn), method.insert)
        return seq[:, P:].reshape(B, H, W, C), (seq[:, :P] if P else None)

    def forward(self, img, tasks=None):
        """``tasks``: (B,) task index per sample when the method holds several tasks'
        tensors (``mmvpt.apis.MultiTaskModel``)."""
        x = self.swin.patch_embed(img)  # (B, H, W, C)
        method = self.prompt
        ctx = method.start(x.shape[0], tasks) if method is not None else None
        pool = self.pool_prompts and self.out_type == 'avg_featmap'
        last_pooled_layer = len(self.swin.layers[self.out_indices[-1]].blocks) + sum(
            len(stage.blocks) for stage in self.swin.layers[:self.out_indices[-1]]) - 1
        outs = []
        layer = 0
        carried = None  # VPT-shallow's prompt set, or the last block's pooled prompt outputs
        for index, stage in enumerate(self.swin.layers):
            x = stage.downsample(x)
            if carried is not None:
                carried = merge_prompts(stage.downsample, carried)
            for block in stage.blocks:
                run = block if method is None else partial(
                    self.forward_block, layer, carried=carried, ctx=ctx,
                    prompt_outputs=pool and layer == last_pooled_layer)
                if self.with_cp and torch.is_grad_enabled():
                    # Recomputed in backward with the RNG state replayed (same dropout masks).
                    x = checkpoint(run, x, use_reentrant=False)
                else:
                    x = run(x)
                if method is not None:
                    x, carried = x
                layer += 1
            if index == self.num_stages - 1 and self.final_norm:
                x = self.swin.norm(x)
                carried = None if carried is None else self.swin.norm(carried)
            if index in self.out_indices:
                outs.append(self._pool(x, carried if pool else None)
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


def merge_prompts(downsample, prompts):
    """Prompt tokens ([B,] P, C) through a stage's patch merging, as VPT's Swin does: each
    concatenated with itself four times (P, 4C), then the merging's norm and reduction."""
    if isinstance(downsample, torch.nn.Identity):  # the first stage merges nothing
        return prompts
    return downsample.reduction(downsample.norm(torch.cat([prompts] * 4, dim=-1)))
