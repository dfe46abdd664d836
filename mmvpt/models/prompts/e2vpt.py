"""E²VPT (Han et al., ICCV 2023): VPT-deep visual prompts + key-value prompts, with token and
segment pruning masks that the pruning hooks drive."""
import torch
import torch.nn as nn

from mmvpt.registry import MODELS

from ..utils.protocols import vpt_protocol
from .base import (
    ForwardContext,
    PromptMethod,
    check_choices,
    check_positive,
    each_layer,
    vpt_uniform,
)

PRUNE_MODES = ('remove', 'mask')
SEGMENT_LAYOUTS = ('contiguous', 'interleaved')
KV_LOCATIONS = ('before', 'after')
# Visual / key-value prompt lengths per task (the E²VPT paper).
E2VPT_VTAB = dict(caltech101=(32, 5), cifar=(5, 5), oxford_flowers102=(1, 1),
                  patch_camelyon=(10, 10), dsprites_loc=(5, 5), dsprites_ori=(5, 5))
E2VPT_VTAB_DEFAULT = (10, 5)
E2VPT_FGVC = (5, 5)
# E²VPT's Swin batch (the E²VPT paper), with VPT's lr scaling (base 2.5 x batch / 256).
E2VPT_SWIN_BATCH = 80


class E2VPTContext(ForwardContext):
    #: kept token indices per layer (``prune_mode='remove'`` after pruning), or None
    kept = None
    #: multiply the prompts by the token mask / by the expanded segment mask
    mask_tokens = False
    mask_segments = False
    #: layers whose kept tokens some stacked tasks pruned and others did not (hidden from
    #: those tasks' samples by a key mask)
    masked_layers = frozenset()
    #: ``learn_masks``: the learnable gates (T, P) and (T, P, R), shared by the prunable layers
    token_gate = None
    segment_gate = None


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
        learn_masks: the official code's runs before pruning: two learnable gates, one per
            visual prompt, ``token_gate`` (P,), and one per segment, ``segment_gate``
            (P, R), both starting at ones and trained with the prompts, multiply the visual
            prompts of every prunable layer (the same two tensors in each), on top of the
            masks. Their gradients are the official importance scores
            (:func:`mmvpt.engine.e2vpt_pruning.importance_scores`).

    What the forward needs to know of the masks (kept indices, whether anything is pruned)
    is read from them outside the forward, so the forward never reads a tensor's value
    into Python (no GPU sync, no ``torch.compile`` graph break): again after every load,
    device move and pruning step, and, in eager mode, whenever a mask was changed in place.
    A compiled model sees in-place mask edits after :meth:`masks_changed`.
    """
    context_class = E2VPTContext
    display_name = 'E2VPT'
    #: tools/protocol.py: pruning with rewinding as the authors' code runs it (E²VPT §4.1):
    #: VPT's grid with the masks learned, a training before pruning, importance scores, a
    #: rewind run per candidate mask, 5 seeds; every training 100 epochs, without the one-run
    #: PromptPruningHook (mmvpt.protocols.stages says what each stage does)
    protocol = dict(
        vpt_protocol("E2VPT's pruning and rewinding", source=(
            'E2VPT (Han et al. 2023) §3.3, §4.1; ChengHan111/E2VPT '
            'tune_vtab_PruningRewind_CVK.py, tune_fgvc_PruningRewind.py, src/engine/trainer.py'),
            search_options={'model.backbone.prompt.learn_masks': True},
            before_final=[dict(type='prune')]),
        options={'train_cfg.max_epochs': 100}, drop_hooks=('mmvpt.PromptPruningHook', ))
    config_folder = 'e2vpt'
    table_order = 20
    benchmark_rows = {'e2vpt': (' (KV 10)', dict(num_kv_tokens=10))}
    # 'e2vpt_pruned' is meant to be pruned by the test ('mask' mode, KV after, separate V)
    tiny_settings = {
        'e2vpt': dict(num_tokens=4, num_kv_tokens=2, num_segments=4),
        'e2vpt_pruned': dict(num_tokens=4, num_kv_tokens=2, num_segments=4, share_kv=False,
                             kv_location='after', prune_mode='mask')}
    swin_config = dict(
        backbone='swin_b',
        comments=(f'E2VPT: batch {E2VPT_SWIN_BATCH} on Swin (E2VPT paper), lr 2.5 x batch / 256; '
                  'pruning reaches the first stage only.', ),
        lines=(f'train_dataloader = dict(batch_size={E2VPT_SWIN_BATCH})',
               f'optim_wrapper = dict(optimizer=dict(lr={2.5 * E2VPT_SWIN_BATCH / 256!r}))'))

    @classmethod
    def config_recipe(cls, benchmark, task):
        visual, kv = (E2VPT_VTAB.get(task, E2VPT_VTAB_DEFAULT) if benchmark == 'vtab'
                      else E2VPT_FGVC)
        return dict(prompt=dict(num_tokens=visual, num_kv_tokens=kv),
                    note=f'{visual} visual / {kv} key-value prompts (E2VPT paper).')
    per_layer = ('prompts', 'kv_prompts', 'v_prompts')

    def __init__(self, num_tokens=10, num_kv_tokens=5, share_kv=True, kv_location='before',
                 dropout=0.1, dropout_mode='sample', num_segments=8,
                 segment_layout='contiguous', prune_mode='remove', learn_masks=False, **backbone):
        super().__init__(**backbone)
        check_positive('num_tokens', num_tokens, allow_zero=True)
        check_positive('num_kv_tokens', num_kv_tokens, allow_zero=True)
        check_choices('E2VPT', kv_location=(kv_location, KV_LOCATIONS),
                      segment_layout=(segment_layout, SEGMENT_LAYOUTS),
                      prune_mode=(prune_mode, PRUNE_MODES))
        widths = sorted(set(self.layer_dims))
        if num_tokens and (not isinstance(num_segments, int) or num_segments < 1
                           or any(width % num_segments for width in widths)):
            raise ValueError(f'E2VPT num_segments={num_segments!r}: must divide the token width'
                             f'{"s" if len(widths) > 1 else ""} {", ".join(map(str, widths))}')
        self.num_tokens = num_tokens
        self.num_kv_tokens = num_kv_tokens
        self.share_kv = share_kv
        self.kv_location = kv_location
        self.set_prompt_dropout(dropout, dropout_mode)
        self.num_segments = num_segments
        self.segment_layout = segment_layout
        self.prune_mode = prune_mode
        self.learn_masks = learn_masks

        L = self.num_layers
        # Pruning reaches the first stage only (all of a ViT; Swin's deeper windows lost
        # accuracy in the paper); the masks of later layers stay all ones.
        self.prunable_layers = slice(*self.stages[0])
        self.prompts = (
            self.stage_parameter(lambda dim, heads: (num_tokens, dim), self.init_prompts)
            if num_tokens else None)
        self.register_buffer('token_mask', torch.ones(L, num_tokens))
        self.register_buffer('segment_mask', torch.ones(L, num_tokens, num_segments))
        # Not per layer: the official code multiplies every layer's prompts by the same two
        # tensors, so their gradients sum over the layers.
        self.token_gate = self.segment_gate = None
        if learn_masks and num_tokens:
            self.token_gate = nn.Parameter(torch.ones(num_tokens))
            self.segment_gate = nn.Parameter(torch.ones(num_tokens, num_segments))
        self.kv_prompts = self.v_prompts = None
        if num_kv_tokens:
            def kv_shape(dim, heads):
                return heads, num_kv_tokens, dim // heads
            self.kv_prompts = self.stage_parameter(kv_shape, self.init_kv_prompts)
            if not share_kv:
                self.v_prompts = self.stage_parameter(kv_shape, self.init_kv_prompts)
        self.masks_changed()

    @property
    def init_prompts(self):
        """The visual prompts' init: VPT's uniform."""
        return vpt_uniform(self.patch_size)

    #: the key-value prompts' init: He uniform per block, fan_in = L_kv * d
    init_kv_prompts = staticmethod(each_layer(nn.init.kaiming_uniform_))

    def reset_parameters(self):
        """Fresh random prompts, drawn as when the method was built, and the gates
        (``learn_masks``) at ones, their start; masks are left as they are."""
        with torch.no_grad():
            for gate in (self.token_gate, self.segment_gate):
                if gate is not None:
                    gate.fill_(1.)
            for tensor, init in ((self.prompts, self.init_prompts),
                                 (self.kv_prompts, self.init_kv_prompts),
                                 (self.v_prompts, self.init_kv_prompts)):
                for stage in ([] if tensor is None else self.stage_tensors(tensor)):
                    init(stage)

    @property
    def prunable(self):
        return self.prompts is not None

    def num_pruned_parameters(self):
        """Prompt elements that pruning took away (tokens, then segments of kept tokens);
        of all tasks together when stacked."""
        if self.prompts is None:
            return 0
        total = 0
        for layer in range(self.num_layers):
            segments = self.layer_of(self.segment_mask, layer)
            tokens = self.layer_of(self.token_mask, layer)
            dims = self.expand_segments(segments, layer) * tokens.unsqueeze(-1)
            total += dims.numel() - int(dims.sum().item())
        return total

    # -- pruning state -------------------------------------------------------------------
    def expand_segments(self, segment_mask, layer):
        """(..., P, R) segment mask -> (..., P, D) mask over layer ``layer``'s prompt dims."""
        repeats = self.layer_dims[layer] // self.num_segments
        if self.segment_layout == 'contiguous':
            return segment_mask.repeat_interleave(repeats, dim=-1)
        return segment_mask.repeat(*([1] * (segment_mask.dim() - 1)), repeats)

    def masks_changed(self):
        """Reads the masks into the forward's Python-side state: the tokens kept per block
        (by some task, when stacked; on the masks' device), the blocks where stacked tasks
        differ in what they kept, and whether any token or segment is pruned."""
        if self.token_mask.is_meta:  # built without storage (parameter counting): nothing to read
            self._mask_state, self._mask_key = (None, frozenset(), False, False), None
            return
        with torch.no_grad():
            tokens = self.with_task_axis(self.token_mask).bool()  # (T, L, P)
            kept_by_any, kept_by_all = tokens.any(0), tokens.all(0)
            tokens_pruned = not bool(kept_by_all.all())
            # Tokens every task pruned leave the sequence ('remove'); where tasks differ,
            # the token stays and a key mask hides it from the tasks that pruned it.
            kept = ([row.nonzero().flatten() for row in kept_by_any]
                    if not bool(kept_by_any.all()) else None)
            masked = frozenset((kept_by_any != kept_by_all).any(-1).nonzero().flatten().tolist())
            segments_pruned = not bool(self.segment_mask.all())
        self._mask_state = (kept, masked, tokens_pruned, segments_pruned)
        self._mask_key = self._masks_version()

    def _masks_version(self):
        return tuple((id(m), m._version, m.device) for m in (self.token_mask, self.segment_mask))

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)  # every loader's route
        self.masks_changed()

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.masks_changed()  # the kept indices follow the masks' device
        return self

    def stacked(self, states):
        method = super().stacked(states)
        method.masks_changed()
        return method

    def start(self, batch_size, tasks=None):
        ctx = super().start(batch_size, tasks)
        if self.prompts is None:
            return ctx
        if not torch.compiler.is_compiling() and self._mask_key != self._masks_version():
            self.masks_changed()  # changed in place since
        kept, masked, tokens_pruned, segments_pruned = self._mask_state
        scoring_tokens = self.token_mask.requires_grad
        if self.prune_mode == 'remove' and not scoring_tokens:
            ctx.kept, ctx.masked_layers = kept, masked
        else:  # 'mask' (the official code): pruned tokens are zeroed but still attend
            ctx.mask_tokens = scoring_tokens or tokens_pruned
        ctx.mask_segments = self.segment_mask.requires_grad or segments_pruned
        if ctx.mask_tokens or ctx.masked_layers:
            ctx.layers['token_mask'] = self.layers(self.token_mask)
        if ctx.mask_segments:
            ctx.layers['segment_mask'] = self.layers(self.segment_mask)
        if self.token_gate is not None:
            ctx.token_gate = self.with_task_axis(self.token_gate)
            ctx.segment_gate = self.with_task_axis(self.segment_gate)
        return ctx

    # -- extension points ---------------------------------------------------------------
    def tokens(self, ctx, layer):
        if self.prompts is None:
            return None
        prompts = ctx.at('prompts', layer)  # (T, P, D)
        if ctx.kept is not None:
            prompts = prompts[:, ctx.kept[layer]]
        elif ctx.mask_tokens:
            prompts = prompts * ctx.at('token_mask', layer).unsqueeze(-1)
        if ctx.mask_segments:
            segments = ctx.at('segment_mask', layer)
            if ctx.kept is not None:
                segments = segments[:, ctx.kept[layer]]
            prompts = prompts * self.expand_segments(segments, layer)
        if ctx.token_gate is not None and layer < self.prunable_layers.stop:  # they start at 0
            # as the official code: the segment gate over the dims, then the token gate
            token_gate, segment_gate = ctx.token_gate, ctx.segment_gate
            if ctx.kept is not None:
                token_gate = token_gate[:, ctx.kept[layer]]
                segment_gate = segment_gate[:, ctx.kept[layer]]
            prompts = prompts * self.expand_segments(segment_gate, layer)
            prompts = prompts * token_gate.unsqueeze(-1)
        return self.drop(ctx, prompts)

    def prompt_mask(self, ctx, layer):
        if layer not in ctx.masked_layers:
            return None
        mask = ctx.at('token_mask', layer).bool()
        return mask if ctx.kept is None else mask[:, ctx.kept[layer]]

    def kv(self, ctx, layer):
        if self.kv_prompts is None:
            return None, None
        keys = ctx.at('kv_prompts', layer)
        values = keys if self.v_prompts is None else ctx.at('v_prompts', layer)
        return ((keys, values), None) if self.kv_location == 'before' else (None, (keys, values))

    def extra_repr(self):
        return (f'num_tokens={self.num_tokens}, num_kv_tokens={self.num_kv_tokens}, '
                f'share_kv={self.share_kv}, kv_location={self.kv_location!r}, '
                f'prune_mode={self.prune_mode!r}, learn_masks={self.learn_masks}')
