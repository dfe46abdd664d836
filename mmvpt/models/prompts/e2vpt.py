"""E²VPT (paper 002): VPT-deep visual prompts + key-value prompts, with token and
segment pruning masks that the pruning hooks drive."""
import torch
import torch.nn as nn

from mmvpt.registry import MODELS
from .base import (PromptMethod, check_choices, check_dropout, check_positive, drop_prompts,
                   vpt_init_bound)

PRUNE_MODES = ('remove', 'mask')
SEGMENT_LAYOUTS = ('contiguous', 'interleaved')
KV_LOCATIONS = ('before', 'after')


@MODELS.register_module()
class E2VPT(PromptMethod):
    """Visual prompts (exactly VPT-deep) and key-value prompts.

    Key-value prompts: per block an (H, L_kv, d) tensor joined to the keys and values in
    head space after the frozen projections; one tensor serves both unless ``share_kv`` is
    False. Pruning state: ``token_mask`` (L, P) and ``segment_mask`` (L, P, R), all ones
    until the pruning hook sets them.

    Args:
        num_tokens: visual prompts per block (P); 0 for none.
        num_kv_tokens: key-value prompts per block (L_kv); 0 for none.
        share_kv: one tensor for keys and values (True) or two.
        kv_location: ``'before'`` (prepend, default) or ``'after'`` the token keys.
        dropout: dropout on the visual prompts (VPT-deep's 0.1).
        dropout_mode: ``'sample'`` (authors) or ``'batch'``.
        num_segments: R, segments per prompt for segment-wise pruning (paper 8, code 16).
        segment_layout: ``'contiguous'`` (paper) or ``'interleaved'`` (official code:
            segment r holds dims r, r + R, r + 2R, ...).
        prune_mode: ``'remove'`` (pruned tokens leave the sequence, so FLOPs fall) or
            ``'mask'`` (official: pruned tokens are zeroed but still attend).
    """

    def __init__(self, num_tokens=10, num_kv_tokens=5, share_kv=True, kv_location='before',
                 dropout=0.1, dropout_mode='sample', num_segments=8,
                 segment_layout='contiguous', prune_mode='remove', **backbone):
        super().__init__(**backbone)
        check_positive('num_tokens', num_tokens, allow_zero=True)
        check_positive('num_kv_tokens', num_kv_tokens, allow_zero=True)
        check_dropout(dropout, dropout_mode)
        check_choices('E2VPT', kv_location=(kv_location, KV_LOCATIONS),
                      segment_layout=(segment_layout, SEGMENT_LAYOUTS),
                      prune_mode=(prune_mode, PRUNE_MODES))
        if num_tokens and (not isinstance(num_segments, int) or num_segments < 1
                           or self.embed_dim % num_segments):
            raise ValueError(f'E2VPT num_segments={num_segments!r}: must divide the token width '
                             f'{self.embed_dim}')
        self.num_tokens = num_tokens
        self.num_kv_tokens = num_kv_tokens
        self.share_kv = share_kv
        self.kv_location = kv_location
        self.kv_first = kv_location == 'before'
        self.dropout = dropout
        self.dropout_mode = dropout_mode
        self.num_segments = num_segments
        self.segment_layout = segment_layout
        self.prune_mode = prune_mode

        L, D = self.num_layers, self.embed_dim
        head_dim = self.embed_dim // self.num_heads
        self.prompts = nn.Parameter(torch.empty(L, num_tokens, D)) if num_tokens else None
        self.register_buffer('token_mask', torch.ones(L, num_tokens))
        self.register_buffer('segment_mask', torch.ones(L, num_tokens, num_segments))
        self.kv_prompts = self.v_prompts = None
        if num_kv_tokens:
            self.kv_prompts = nn.Parameter(torch.empty(L, self.num_heads, num_kv_tokens, head_dim))
            if not share_kv:
                self.v_prompts = nn.Parameter(torch.empty_like(self.kv_prompts))
        self.reset_parameters()
        self._mask_cache = (None, None)

    def reset_parameters(self):
        """Fresh random prompts (VPT's uniform for visual, He uniform with
        fan_in = L_kv * d for key-value prompts); masks are left as they are."""
        with torch.no_grad():
            if self.prompts is not None:
                bound = vpt_init_bound(self.patch_size, self.embed_dim)
                self.prompts.uniform_(-bound, bound)
            for kv in (self.kv_prompts, self.v_prompts):
                for block_prompts in ([] if kv is None else kv):
                    nn.init.kaiming_uniform_(block_prompts)

    @property
    def prunable(self):
        return self.prompts is not None

    def num_pruned_parameters(self):
        """Prompt elements that pruning took away (tokens, then segments of kept tokens)."""
        if self.prompts is None:
            return 0
        dims = self.expand_segments(self.segment_mask) * self.token_mask.unsqueeze(-1)
        return int(dims.numel() - dims.sum().item())

    # -- pruning state -------------------------------------------------------------------
    def expand_segments(self, segment_mask):
        """(..., P, R) segment mask -> (..., P, D) mask over prompt dims."""
        repeats = self.embed_dim // self.num_segments
        if self.segment_layout == 'contiguous':
            return segment_mask.repeat_interleave(repeats, dim=-1)
        return segment_mask.repeat(*([1] * (segment_mask.dim() - 1)), repeats)

    def _mask_state(self):
        """(kept token indices per block or None, any token pruned, any segment pruned),
        cached until a mask changes, so the forward does not sync on the masks every step."""
        key = tuple((id(m), m._version, m.device) for m in (self.token_mask, self.segment_mask))
        if self._mask_cache[0] != key:
            tokens = self.token_mask.detach().bool()
            tokens_pruned = not bool(tokens.all())
            kept = [row.nonzero().flatten() for row in tokens] if tokens_pruned else None
            self._mask_cache = (key, (kept, tokens_pruned, not bool(self.segment_mask.all())))
        return self._mask_cache[1]

    def start(self, batch_size):
        ctx = super().start(batch_size)
        if self.prompts is None:
            return ctx
        kept, tokens_pruned, segments_pruned = self._mask_state()
        scoring_tokens = self.token_mask.requires_grad
        ctx.kept = kept if self.prune_mode == 'remove' and not scoring_tokens else None
        ctx.mask_tokens = ctx.kept is None and (scoring_tokens or tokens_pruned)
        ctx.mask_segments = self.segment_mask.requires_grad or segments_pruned
        return ctx

    # -- extension points ---------------------------------------------------------------
    def tokens(self, ctx, layer):
        if self.prompts is None:
            return None
        prompts, segments = self.prompts[layer], self.segment_mask[layer]
        if ctx.kept is not None:
            prompts, segments = prompts[ctx.kept[layer]], segments[ctx.kept[layer]]
        elif ctx.mask_tokens:
            prompts = prompts * self.token_mask[layer].unsqueeze(-1)
        if ctx.mask_segments:
            prompts = prompts * self.expand_segments(segments)
        return drop_prompts(prompts, ctx.batch_size, self.dropout, self.dropout_mode, self.training)

    def kv(self, ctx, layer):
        if self.kv_prompts is None:
            return None
        keys = self.kv_prompts[layer]
        values = keys if self.v_prompts is None else self.v_prompts[layer]
        return keys, values

    def extra_repr(self):
        return (f'num_tokens={self.num_tokens}, num_kv_tokens={self.num_kv_tokens}, '
                f'share_kv={self.share_kv}, kv_location={self.kv_location!r}, '
                f'prune_mode={self.prune_mode!r}')
