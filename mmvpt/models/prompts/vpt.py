"""VPT (Jia et al., 2022): learnable tokens placed after CLS, shallow or deep."""
import torch.nn as nn

from mmvpt.registry import MODELS

from ..utils.protocols import vpt_protocol
from .base import PromptMethod, check_positive, uniform_prompts, vpt_init_bound, vpt_uniform

# The prompt lengths VPT searched for ViT, chosen per task on the val split (VPT §4.1): in the
# official code an outer loop by hand, one lr x wd grid per length (tune_vtab.py has no P axis).
VPT_PROMPT_LENGTHS = (1, 5, 10, 50, 100, 200)
# VPT-deep prompts / base lr / wd / batch of the three tasks whose values VPT published
# (KMnP/vpt demo.ipynb, its final runs "with the hyperparameters ... from our paper"); the rest
# are in a table the authors host outside the repository (its issue #4), which we cannot read.
VPT_DEMO = dict(dmlab=(100, 1.0, 1e-3, 64), sun397=(5, 25., 1e-4, 128),
                eurosat=(100, 1.0, 1e-3, 64))


@MODELS.register_module()
class VPT(PromptMethod):
    """Visual prompt tuning.

    Shallow: one set of ``num_tokens`` prompts joins the sequence before block 0 and passes
    through every block (on Swin: through the first stage; patch merging drops it). Deep:
    each block gets its own set, replacing the outputs of the previous block's prompts.

    Args:
        num_tokens: prompts per set (P).
        deep: one set per block (True) or one at the input (False).
        dropout: dropout on the prompts; None picks the official demo's 0.1 for deep and
            0 for shallow.
        dropout_mode: ``'sample'`` (authors: each sample drops its own elements) or
            ``'batch'`` (one mask for the batch, so the prompts stay batch-shared).
        proj_dim: if set, prompts live in this width and a linear layer maps them to D
            (VPT's optional projection; off by default).
    """
    per_layer = ('prompts', )
    #: tools/protocol.py: VPT's lr x wd grid for each prompt length, the best of all on val
    protocol = vpt_protocol("VPT's", num_tokens=VPT_PROMPT_LENGTHS)
    config_folder = 'vpt'
    table_order = 10
    benchmark_rows = {'vpt': ('', {}), 'vpt_batch': (', batch dropout', dict(dropout_mode='batch'))}
    tiny_settings = {'vpt_deep': dict(num_tokens=3), 'vpt_shallow': dict(num_tokens=3, deep=False)}

    @classmethod
    def config_recipe(cls, benchmark, task):
        if benchmark == 'vtab' and task in VPT_DEMO:
            tokens, base_lr, wd, batch = VPT_DEMO[task]
            return dict(prompt=dict(num_tokens=tokens), loader=dict(batch_size=batch),
                        optimizer=dict(lr=base_lr * batch / 256, weight_decay=wd), note=(
                            f'{tokens} prompts, base lr {base_lr:g} (x {batch} / 256), wd {wd:g}, '
                            f"batch {batch}: VPT's own (KMnP/vpt demo.ipynb, \"the same from our "
                            'paper").'))
        return dict(prompt=dict(num_tokens=10), note=(
            '10 prompts is our default; VPT chose the prompt length per task (tools/protocol.py '
            'searches it).'))

    @staticmethod
    def name_for(deep=True, **_):
        return 'VPT-deep' if deep else 'VPT-shallow'

    @property
    def display_name(self):
        return self.name_for(self.deep)

    def __init__(self, num_tokens=10, deep=True, dropout=None, dropout_mode='sample',
                 proj_dim=None, **backbone):
        super().__init__(**backbone)
        check_positive('num_tokens', num_tokens)
        self.num_tokens = num_tokens
        self.deep = deep
        self.set_prompt_dropout((0.1 if deep else 0.) if dropout is None else dropout, dropout_mode)
        if proj_dim and len(self.stages) > 1:
            raise ValueError('VPT proj_dim: the projection needs one token width; this backbone '
                             f'has {sorted(set(self.layer_dims))}')
        if not deep:
            width = proj_dim or self.embed_dim
            self.prompts = uniform_prompts((1, num_tokens, width),
                                           vpt_init_bound(self.patch_size, width))
        else:
            self.prompts = self.stage_parameter(
                lambda dim, heads: (num_tokens, proj_dim or dim), vpt_uniform(self.patch_size))
        self.proj = None
        if proj_dim:
            self.proj = nn.Linear(proj_dim, self.embed_dim)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode='fan_out')

    def check_stackable(self):
        if self.proj is not None:
            raise ValueError('VPT with proj_dim: stacking tasks would need a projection per task; '
                             'serve such checkpoints one model each')

    def tokens(self, ctx, layer):
        return self._prompts(ctx, layer) if self.deep else None

    def sequence_tokens(self, ctx, layer):
        # shallow: one set joins before block 0 and passes through every block
        return self._prompts(ctx, layer) if not self.deep and layer == 0 else None

    def _prompts(self, ctx, layer):
        prompts = ctx.at('prompts', layer)
        if self.proj is not None:
            prompts = self.proj(prompts)
        return self.drop(ctx, prompts)

    def extra_repr(self):
        return f'num_tokens={self.num_tokens}, deep={self.deep}, dropout={self.dropout}'
