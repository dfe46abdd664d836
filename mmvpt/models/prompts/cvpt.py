"""CVPT (Cross Visual Prompt Tuning, ICCV 2025): the token stream cross-attends to
per-block prompts; prompts never enter the self-attention, so its cost stays O(N^2) and the
prompts add O(N * P)."""
import torch
import torch.nn as nn
from timm.layers import Attention

from mmvpt.registry import MODELS

from ..utils.attention import cross_attention, cross_attention_prompts
from ..utils.protocols import fixed_recipe
from .base import RESIDUAL_POINTS, PromptMethod, check_choices, check_positive, vpt_uniform

#: the paper's insert positions 1..5: the block's residual points, numbered in block order
INSERT_POSITIONS = dict(enumerate(RESIDUAL_POINTS, start=1))
CA_INITS = ('shared', 'random')
PROMPT_INITS = ('xavier', 'vpt')
# Prompts / lr per VTAB-1k task; prompts / lr / wd / batch per FGVC task (the CVPT paper).
CVPT_VTAB = dict(
    cifar=(10, 1e-3), caltech101=(200, 1e-3), dtd=(10, 1e-3), oxford_flowers102=(5, 2e-3),
    oxford_iiit_pet=(5, 1e-3), svhn=(5, 1e-2), sun397=(10, 2e-3), patch_camelyon=(1, 1e-2),
    eurosat=(5, 5e-3), resisc45=(10, 5e-3), diabetic_retinopathy=(5, 5e-3),
    clevr_count=(20, 1e-3), clevr_dist=(50, 1e-3), dmlab=(200, 2e-3), kitti=(20, 5e-3),
    dsprites_loc=(20, 5e-3), dsprites_ori=(5, 5e-3), smallnorb_azi=(50, 5e-3),
    smallnorb_ele=(50, 1e-3))
CVPT_FGVC = dict(cub=(5, 5e-4, 0.05, 32), cars=(100, 2e-3, 0.05, 16), dogs=(10, 2e-4, 1e-5, 16),
                 flowers=(5, 1e-3, 0.05, 16), nabirds=(200, 2e-4, 1e-5, 16))


@MODELS.register_module()
class CVPT(PromptMethod):
    """Cross visual prompt tuning.

    Per block, CA(x) = softmax(q(x) k(P)^T / sqrt(d)) v(P) W_o joins the block at ``insert``
    (the paper's numbers, and the names of the block's residual points):

    1. ``'before_attn'``: x += CA(x); x += SA(LN1 x); x += MLP(LN2 x)
    2. ``'beside_attn'``: x += SA(LN1 x) + CA(x); x += MLP(LN2 x)
    3. ``'after_attn'``: x += SA(LN1 x); x += CA(x); x += MLP(LN2 x)   (default)
    4. ``'mlp_input'``: x += SA(LN1 x); x += MLP(LN2 x + CA(x))
    5. ``'after_mlp'``: x += SA(LN1 x); x += MLP(LN2 x); x += CA(x)

    Args:
        num_tokens: prompts per block (P).
        insert: where CA joins: a name above or the paper's number 1..5.
        dropout: dropout on the prompts (0.1).
        dropout_mode: ``'sample'`` (authors: per-sample masks, so prompt keys/values are
            computed per sample while training) or ``'batch'`` (one mask, computed once).
        init: ``'xavier'`` (official: xavier_uniform over the whole (L, P, D) tensor) or
            ``'vpt'``.
        ca_init: ``'shared'``: the block's own self-attention weights; ``'random'``: a
            freshly initialised attention.
        ca_trainable: train the cross-attention. With ``ca_init='shared'`` and False
            (default) the block's frozen tensors are used directly: no extra parameters.
            Otherwise each block gets its own copy; with ``ca_init='shared'`` the copies
            are derived from the frozen self-attention (``derive_from_frozen``).
    """
    display_name = 'CVPT'
    #: tools/protocol.py: the paper fixes prompts and lr per task (FGVC: also wd and batch),
    #: which the configs carry; 5 seeds of them
    protocol = fixed_recipe("CVPT's per-task recipe",
                            'CVPT (ICCV 2025) §4.1 and its per-task tables')
    config_folder = 'cvpt'
    table_order = 30
    benchmark_rows = {
        'cvpt': (', batch dropout', dict(dropout_mode='batch')),
        'cvpt_sample': (', sample dropout', dict(dropout_mode='sample'))}
    # folded into the prompt side on CPU for few prompts (2), not for many (12)
    tiny_settings = {'cvpt_folded': dict(num_tokens=2),
                     'cvpt_plain': dict(num_tokens=12, ca_trainable=True)}

    @classmethod
    def config_recipe(cls, benchmark, task):
        if benchmark == 'vtab':
            tokens, lr = CVPT_VTAB[task]
            return dict(prompt=dict(num_tokens=tokens), loader=dict(batch_size=32),
                        optimizer=dict(lr=lr), note=f'{tokens} prompts, lr {lr:g} (CVPT paper).')
        tokens, lr, wd, batch = CVPT_FGVC[task]
        return dict(prompt=dict(num_tokens=tokens), loader=dict(batch_size=batch),
                    optimizer=dict(lr=lr, weight_decay=wd),
                    note=f'{tokens} prompts, lr {lr:g}, wd {wd:g}, batch {batch} (CVPT paper).')
    per_layer = ('prompts', )
    derived_from_frozen = ('cross_attn', )

    def __init__(self, num_tokens=10, insert='after_attn', dropout=0.1, dropout_mode='sample',
                 init='xavier', ca_init='shared', ca_trainable=False, **backbone):
        super().__init__(**backbone)
        check_positive('num_tokens', num_tokens)
        check_choices('CVPT', init=(init, PROMPT_INITS), ca_init=(ca_init, CA_INITS))
        self.num_tokens = num_tokens
        #: the residual point CA joins at (a name of :data:`RESIDUAL_POINTS`)
        self.insert = self.insert_point(insert)
        self.set_prompt_dropout(dropout, dropout_mode)
        self.ca_init = ca_init
        self.ca_trainable = ca_trainable

        # xavier_uniform over each stage's whole (L, P, D) tensor: bound sqrt(6 / (D * (P + L)))
        self.prompts = self.stage_parameter(
            lambda dim, heads: (num_tokens, dim),
            nn.init.xavier_uniform_ if init == 'xavier' else vpt_uniform(self.patch_size))

        self.cross_attn = None
        if self.owns_cross_attention:
            self.cross_attn = nn.ModuleList(
                Attention(dim, heads, qkv_bias=self.qkv_bias)
                for dim, heads in zip(self.layer_dims, self.layer_heads))
            self.cross_attn.requires_grad_(ca_trainable)
        if self.cross_attn is None or ca_init != 'shared':
            self.derived_from_frozen = ()  # the frozen blocks' own, or a random init

    @staticmethod
    def insert_point(insert):
        """The residual point named by ``insert``: a name, or the paper's number 1..5."""
        if insert in RESIDUAL_POINTS:
            return insert
        if isinstance(insert, int) and not isinstance(insert, bool) and insert in INSERT_POSITIONS:
            return INSERT_POSITIONS[insert]
        raise ValueError(f'CVPT insert={insert!r}: choose one of {RESIDUAL_POINTS} or the '
                         f"paper's numbers 1..{len(RESIDUAL_POINTS)}")

    @classmethod
    def canonical_options(cls, options):
        """``options`` with ``insert`` as its name, so that ``insert=3`` and
        ``insert='after_attn'`` compare equal."""
        if 'insert' in options:
            options = {**options, 'insert': cls.insert_point(options['insert'])}
        return options

    @property
    def owns_cross_attention(self):
        return self.ca_init != 'shared' or self.ca_trainable

    def derive_from_frozen(self, backbone):
        """Copies each block's self-attention weights into its own cross-attention
        (``ca_init='shared'`` with ``ca_trainable=True``)."""
        if not self.derived_from_frozen:
            return
        with torch.no_grad():
            for ca, block in zip(self.cross_attn, backbone.blocks):
                if type(ca) is type(block.attn):
                    ca.load_state_dict(block.attn.state_dict())
                else:  # Swin's window attention: the projections (no position bias)
                    ca.qkv.load_state_dict(block.attn.qkv.state_dict())
                    ca.proj.load_state_dict(block.attn.proj.state_dict())

    def check_stackable(self):
        if self.owns_cross_attention:
            raise ValueError(
                f'CVPT with its own cross-attention (ca_init={self.ca_init!r}, ca_trainable='
                f'{self.ca_trainable}): each task would bring a whole attention per block; '
                'stacking serves the weight-shared frozen cross-attention (ca_init=\'shared\', '
                'ca_trainable=False)')

    def residual_term(self, ctx, layer, where, x, attn):
        if where != self.insert:
            return None
        prompts = self.drop(ctx, ctx.at('prompts', layer))
        ca = attn if self.cross_attn is None else self.cross_attn[layer]
        # the prompt side once per task (or batch), then gathered per sample
        return cross_attention(ca, x, ctx.per_sample(cross_attention_prompts(ca, x, prompts)))

    def extra_repr(self):
        return (f'num_tokens={self.num_tokens}, insert={self.insert!r}, ca_init={self.ca_init!r}, '
                f'ca_trainable={self.ca_trainable}')
