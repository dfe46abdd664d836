"""iVPT (Zhou, Chen and Huang): cross-layer dynamic connection (CDC) with dynamic
aggregation (DA) of VPT-deep prompts, and attentive reinforcement (AR) of the most attended
image tokens."""
import logging

import torch
import torch.nn as nn
from mmengine.logging import print_log

from mmvpt.registry import MODELS

from ..utils.attention import report_probe
from ..utils.protocols import VPT_SOURCE, vpt_protocol
from .base import (
    PromptMethod,
    check_choices,
    check_positive,
    uniform_prompts,
    vpt_init_bound,
    vpt_uniform,
)

DA_INITS = ('identity', 'zeros')
AR_INITS = ('vpt', 'zeros')
# N (CDC prompts) / k (AR prompts) per task, the iVPT paper's Tables 15-16.
IVPT_VTAB = dict(
    cifar=(10, 10), caltech101=(10, 5), dtd=(10, 10), oxford_flowers102=(10, 50),
    oxford_iiit_pet=(10, 20), svhn=(50, 20), sun397=(5, 1), patch_camelyon=(30, 30),
    eurosat=(50, 5), resisc45=(10, 50), diabetic_retinopathy=(30, 30), clevr_count=(100, 50),
    clevr_dist=(50, 100), dmlab=(10, 10), kitti=(50, 10), dsprites_loc=(10, 1),
    dsprites_ori=(50, 1), smallnorb_azi=(50, 10), smallnorb_ele=(200, 1))
IVPT_FGVC = dict(cub=(10, 1), nabirds=(50, 10), flowers=(5, 10), dogs=(10, 10), cars=(10, 10))


@MODELS.register_module()
class IVPT(PromptMethod):
    """iVPT.

    CDC + DA: P̂^0 = P^0 and P̂^l = P^l + Γ^{l-1} P^{l-1} (the previous block's raw
    prompts), Γ^{l-1} a learnable N x N matrix; P̂^l enters block l as VPT-deep tokens.
    AR: after block l < L-1, the k image tokens with the highest CLS attention (softmax
    over all keys, mean over heads) get k learnable vectors added, in descending order.

    Parameters, ViT-B with N = k = 10: CDC (L, N, D) 92,160; DA (L-1, N, N) 1,100;
    AR (L-1, k, D) 84,480. On Swin, prompts have their stage's width and a stage's first
    block takes no connection from the previous stage (another width), so DA has
    sum(depth_s - 1) matrices; AR needs a CLS token, which Swin lacks, so it is off there.

    Args:
        num_tokens: N, prompts per block.
        num_ar_tokens: k, reinforced image tokens per block; 0 switches AR off (as for
            segmentation). A backbone without CLS token (Swin) switches it off too, and
            says so in the log.
        dynamic_aggregation: learn Γ (True) or fix it to the identity (plain CDC).
        da_init: ``'identity'`` (training starts from plain CDC) or ``'zeros'``.
        ar_init: AR vectors' init, ``'vpt'`` (VPT's uniform) or ``'zeros'``; the paper
            names none.
        dropout: dropout on the prompts entering each block (VPT-deep's 0.1).
        dropout_mode: ``'sample'`` or ``'batch'``.
    """
    display_name = 'iVPT'
    #: tools/protocol.py: iVPT trains "by following (Jia et al., 2022)" and publishes N and k
    #: per task but no lr or wd: VPT's grid for those, N and k from the configs
    protocol = vpt_protocol("VPT's (iVPT follows VPT)", source=(
        'iVPT §4.1 (Implementation Details) and appendix C, Tables 15-16; ' + VPT_SOURCE))
    config_folder = 'ivpt'
    table_order = 40
    benchmark_rows = {'ivpt': (' (k=10)', dict(num_ar_tokens=10))}
    tiny_settings = {'ivpt': dict(num_tokens=3, num_ar_tokens=2)}
    swin_config = dict(backbone='swin_b_without_ar', comments=(
        'iVPT: no attentive reinforcement, which needs a CLS token (Swin has none).', ), lines=())

    @classmethod
    def backbone_options(cls, backbone):
        # attentive reinforcement follows the CLS token's attention; Swin has no CLS token
        return dict(num_ar_tokens=0) if backbone == 'swin' else {}

    @classmethod
    def benchmark_row(cls, name, backbone):
        suffix, options = super().benchmark_row(name, backbone)
        return (' (no AR)' if backbone == 'swin' else suffix), options

    @classmethod
    def config_recipe(cls, benchmark, task):
        tokens, ar = (IVPT_VTAB if benchmark == 'vtab' else IVPT_FGVC)[task]
        return dict(prompt=dict(num_tokens=tokens, num_ar_tokens=ar),
                    pipelines=('ivpt_train_pipeline', 'ivpt_test_pipeline'),
                    note=f'N = {tokens} CDC prompts, k = {ar} AR prompts (iVPT paper).')
    per_layer = ('ar_prompts', )

    def __init__(self, num_tokens=10, num_ar_tokens=10, dynamic_aggregation=True,
                 da_init='identity', ar_init='vpt', dropout=0.1, dropout_mode='sample',
                 **backbone):
        super().__init__(**backbone)
        check_positive('num_tokens', num_tokens)
        check_positive('num_ar_tokens', num_ar_tokens, allow_zero=True)
        check_choices('IVPT', da_init=(da_init, DA_INITS), ar_init=(ar_init, AR_INITS))
        self.num_tokens = num_tokens
        self.num_ar_tokens = num_ar_tokens
        self.dynamic_aggregation = dynamic_aggregation
        self.set_prompt_dropout(dropout, dropout_mode)

        L, N, D = self.num_layers, num_tokens, self.embed_dim
        self.prompts = self.stage_parameter(lambda dim, heads: (N, dim),
                                            vpt_uniform(self.patch_size))
        # Γ between adjacent blocks of the same stage
        num_connections = sum(end - start - 1 for start, end in self.stages)
        self.aggregation = None
        if dynamic_aggregation and num_connections:
            start = torch.eye(N) if da_init == 'identity' else torch.zeros(N, N)
            self.aggregation = nn.Parameter(start.repeat(num_connections, 1, 1))
        if num_ar_tokens and not self.has_cls_token:
            print_log(f'IVPT: attentive reinforcement needs a CLS token, which this backbone '
                      f'lacks; num_ar_tokens={num_ar_tokens} is ignored (AR off)',
                      logger='current', level=logging.WARNING)
            self.num_ar_tokens = num_ar_tokens = 0
        self.ar_prompts = None
        if num_ar_tokens and L > 1:
            bound = vpt_init_bound(self.patch_size, D)
            self.ar_prompts = (uniform_prompts((L - 1, num_ar_tokens, D), bound)
                               if ar_init == 'vpt'
                               else nn.Parameter(torch.zeros(L - 1, num_ar_tokens, D)))

    def start(self, batch_size, tasks=None):
        ctx = super().start(batch_size, tasks)
        # The mixing is the same for every sample: once per forward (and task), all blocks
        # at once, on (T, L, N, D) prompts and (T, L - 1, N, N) Γ.
        gamma = None if self.aggregation is None else self.with_task_axis(self.aggregation)
        mixed = []
        first_connection = 0
        for prompts in self.stage_tensors(self.prompts):
            prompts = self.with_task_axis(prompts)
            previous = prompts[:, :-1]
            if gamma is not None:
                count = previous.shape[1]
                previous = torch.matmul(gamma[:, first_connection:first_connection + count],
                                        previous)
                first_connection += count
            # the stage's first block takes its own prompts; block l P^l + Γ^{l-1} P^{l-1}
            mixed += [prompts[:, 0]] + list((prompts[:, 1:] + previous).unbind(1))
        ctx.layers['prompts'] = mixed
        return ctx

    def tokens(self, ctx, layer):
        return self.drop(ctx, ctx.at('prompts', layer))

    def wants_cls_attention(self, layer):
        return self.ar_prompts is not None and layer < self.num_layers - 1

    def after_block(self, ctx, layer, x, cls_attention, image_start):
        """Adds AR vector j to the image token ranked j-th by CLS attention."""
        B, _, D = x.shape
        k = self.num_ar_tokens
        top = cls_attention.topk(k, dim=-1).indices  # (B, k), descending
        report_probe(self, 'reinforced', method=self, layer=layer, indices=top)
        vectors = ctx.per_sample(ctx.at('ar_prompts', layer))  # (1|B, k, D)
        # one out-of-place scatter into the whole sequence: a single copy of x
        index = (top + image_start).unsqueeze(-1).expand(B, k, D)
        return x.scatter_add(1, index, vectors.to(x.dtype).expand(B, k, D))

    def extra_repr(self):
        return (f'num_tokens={self.num_tokens}, num_ar_tokens={self.num_ar_tokens}, '
                f'dynamic_aggregation={self.dynamic_aggregation}')
