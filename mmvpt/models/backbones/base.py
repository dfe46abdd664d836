"""What the prompted backbones share: a frozen timm model built by name, a prompt method
plugged in through one block routine, pretrained weights through ``init_cfg``, and
tuned-only checkpoints loading on top of them by any route."""
from functools import partial
from typing import Callable, NamedTuple, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers.format import Format, nchw_to
from torch.utils.checkpoint import checkpoint

from mmvpt.registry import MODELS

from ..prompts.base import PromptMethod, check_method_options
from ..utils.attention import join_kv, mlp_forward, num_keys, project_kv, run_op
from ..utils.tuned_state import check_checkpoint_fit

_IDENTITY = nn.Identity()


class AttentionInputs(NamedTuple):
    """What a prompted block's attention takes beside its normalised sequence
    (:meth:`PromptedBackbone.attend`)."""
    #: (H, W) of the image tokens, the sequence's last H * W
    grid: tuple
    #: prompts carried in the sequence between the prefix and the image tokens (they query)
    num_carried: int = 0
    #: extra (keys, values), each (H, E, d) or (1|B, H, E, d) in head space, joined before
    #: and after the sequence's keys; or None
    before: Optional[tuple] = None
    after: Optional[tuple] = None
    #: (B, keys) bool over [before, sequence, after]: False for keys no query may see; or None
    key_mask: Optional[torch.Tensor] = None
    #: also return the CLS query's attention row over every key
    cls_row: bool = False
    #: the block's frozen operations through the method's ``adapt`` (:meth:`op_of`), or None
    op: Optional[Callable] = None


class PromptedBackbone(BaseModule):
    """Base of :class:`PromptedViT` and :class:`PromptedSwin`.

    A subclass names its timm class (``timm_class``), keeps the timm model under its own
    attribute (the checkpoint key prefix) and exposes it as ``timm_model``, its blocks in
    order as ``blocks``, and loads a checkpoint file in ``load_pretrained``. Its forward
    lays the tokens out as one (B, S, C) sequence, [prefix tokens, carried prompts, the
    image tokens of an (H, W) grid], and runs block l by :meth:`run_block`; it supplies
    only how its blocks attend (:meth:`attend`), how a block runs without a method
    (:meth:`plain_block`) and how many sequence keys a query sees (:meth:`sequence_keys`).
    """
    timm_class = None
    #: tokens before the prompts in the block sequence (CLS, registers)
    num_prefix_tokens = 0
    #: the block whose own prompts' outputs are used (pooled), or None: its prompts join
    #: the sequence instead of entering as keys and values only
    prompt_outputs_layer = None
    #: gradient checkpointing of every block (:meth:`run_block`); a backbone option
    with_cp = False

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        #: the frozen weights are in place (``init_weights`` ran): a tuned-only checkpoint
        #: may load on top of them
        self.backbone_ready = False
        # torch < 2.2 has only the private names of these hooks
        self._register_state_dict_hook(self._record_pretrained)
        self._register_load_state_dict_pre_hook(self._complete_tuned_only_state, with_module=True)

    def create_timm_model(self, arch, **kwargs):
        """``timm.create_model(arch)`` without head, with errors that name the option."""
        name = type(self).__name__
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as err:  # timm's "Unknown model"
            raise ValueError(f'{name} arch={arch!r}: {err}') from None
        except TypeError as err:  # an argument the model does not take
            raise ValueError(f'{name} arch={arch!r}: {err}; {name} needs a timm '
                             f'{self.timm_class.__name__}') from None
        if not isinstance(model, self.timm_class):
            raise ValueError(f'{name} arch={arch!r} is a {type(model).__name__}, not a timm '
                             f'{self.timm_class.__name__}')
        return model

    def check_out_indices(self, out_indices, count, unit):
        """``out_indices`` (an int or a sequence; negative counts from the end) as a sorted
        list of distinct indices below ``count``."""
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        resolved = sorted(i % count for i in indices)
        if resolved != sorted(set(resolved)) or any(not -count <= i < count for i in indices):
            raise ValueError(f'{type(self).__name__} out_indices={out_indices!r}: need distinct '
                             f'{unit} of {count}')
        return resolved

    def build_prompt(self, frozen, prompt, **method_args):
        """Freezes the timm model if asked and builds the prompt method (or None)."""
        if frozen:
            self.timm_model.requires_grad_(False)
        method_class = (MODELS.get(prompt['type'])
                        if isinstance(prompt, dict) and 'type' in prompt else None)
        if isinstance(method_class, type) and issubclass(method_class, PromptMethod):
            check_method_options(method_class, prompt)
        method_args.setdefault('patch_norm',
                               not isinstance(self.timm_model.patch_embed.norm, nn.Identity))
        self.prompt = None if prompt is None else MODELS.build(prompt, default_args=method_args)
        # what the method derives from the frozen weights fits them from the start, whatever
        # weights come later
        self.derive_from_frozen()

    # -- the prompted block ----------------------------------------------------------
    def start(self, batch_size, tasks=None):
        """The method's per-forward context, or None without a method."""
        return None if self.prompt is None else self.prompt.start(batch_size, tasks)

    def run_block(self, layer, x, ctx, grid):
        """Block ``layer`` (:meth:`forward_block`), with gradient checkpointing if
        ``with_cp``: the block, with its method's extension points, keeps only its input
        and is recomputed in backward, the RNG state replayed (same dropout masks)."""
        if self.with_cp and torch.is_grad_enabled():
            return checkpoint(self.forward_block, layer, x, ctx, grid, use_reentrant=False)
        return self.forward_block(layer, x, ctx, grid)

    def forward_block(self, layer, x, ctx, grid):
        """Block ``layer`` on the (B, S, C) sequence [prefix, carried prompts, image tokens
        of ``grid``], with the method's extension points where they act:

        - keys and values (:meth:`attention_inputs`): the block's own prompt ``tokens``,
          ``sequence_tokens`` joining the sequence, extra ``kv``;
        - ``adapt``: each frozen operation's output (norms, projections, MLP linears);
        - the residual stream, in block order (``term``: ``residual_term`` at the named
          point; SA and MLP the whole branches, with norm, layer scale and drop-path)::

              x = x + term('before_attn')
              x = x + branch('attn', SA(LN1 x)) + term('beside_attn')
              x = x + term('after_attn')
              x = x + branch('mlp', MLP(LN2 x + term('mlp_input')))
              x = x + term('after_mlp')

        - ``after_block``: the output, given the CLS attention row over the image tokens.

        The method answers per task; what it returns is gathered per sample.
        """
        block, method = self.blocks[layer], self.prompt
        if method is None:
            return self.plain_block(block, x, grid)
        x, inputs = self.attention_inputs(layer, x, ctx, grid)
        op = inputs.op

        def term(where, h):
            return method.residual_term(ctx, layer, where, h, block.attn)

        x = _plus(x, term('before_attn', x))
        attended, row = self.attend(block, run_op(op, 'norm1', block.norm1, x), inputs)
        attended = block.drop_path1(getattr(block, 'ls1', _IDENTITY)(attended))
        x = _plus(x + method.branch(ctx, layer, 'attn', x, attended), term('beside_attn', x))
        x = _plus(x, term('after_attn', x))
        h = _plus(run_op(op, 'norm2', block.norm2, x), term('mlp_input', x))
        mlp = block.mlp(h) if op is None else mlp_forward(block.mlp, h, op)
        x = x + method.branch(ctx, layer, 'mlp', x,
                              block.drop_path2(getattr(block, 'ls2', _IDENTITY)(mlp)))
        x = _plus(x, term('after_mlp', x))
        if inputs.cls_row:
            image_start = self.num_prefix_tokens + inputs.num_carried
            key_start = num_keys(inputs.before) + image_start
            num_image = grid[0] * grid[1]
            x = method.after_block(ctx, layer, x, row[:, key_start:key_start + num_image],
                                   image_start)
        return x

    def attention_inputs(self, layer, x, ctx, grid):
        """The sequence block ``layer`` attends over and what its attention takes beside it
        (:class:`AttentionInputs`), from the method's prompts:

        - the block's prompt tokens (``tokens``) replace the previous block's. Their outputs
          would never be used, so they enter as keys and values only (LN1 and the K/V rows
          of the frozen qkv projection): no prompt query, attention row, output projection
          or MLP is computed for them. Where their outputs are used
          (``prompt_outputs_layer``) they join the sequence, as ``sequence_tokens`` do,
          replacing the prompts the sequence carried;
        - extra keys and values (``kv``), before and after the sequence's keys.
        """
        block, method = self.blocks[layer], self.prompt
        B, prefix = x.shape[0], self.num_prefix_tokens
        num_carried = x.shape[1] - prefix - grid[0] * grid[1]
        before, after = (ctx.per_sample(kv) for kv in method.kv(ctx, layer))
        tokens, key_mask = method.tokens(ctx, layer), None
        joining = method.sequence_tokens(ctx, layer)
        if tokens is not None and layer == self.prompt_outputs_layer:
            if method.prompt_mask(ctx, layer) is not None:
                raise NotImplementedError(
                    f'{type(method).__name__}: tasks with differently pruned prompts whose outputs '
                    'are used (pooled) cannot share a batch')
            tokens, joining = None, tokens
        if joining is not None:  # replaces the carried prompts, if any
            x = torch.cat([x[:, :prefix], ctx.per_sample(joining).expand(B, -1, -1),
                           x[:, prefix + num_carried:]], dim=1)
            num_carried = joining.shape[1]
        if tokens is not None:  # keys and values per task, then gathered per sample
            prompt_mask = ctx.per_sample(method.prompt_mask(ctx, layer))
            if prompt_mask is not None:  # keys: [before, these prompts, sequence, after]
                ones = prompt_mask.new_ones
                sequence_and_after = self.sequence_keys(block, x, num_carried) + num_keys(after)
                key_mask = torch.cat([ones(B, num_keys(before)), prompt_mask,
                                      ones(B, sequence_and_after)], 1)
            before = join_kv(before, ctx.per_sample(project_kv(block.attn, block.norm1(tokens))))
        return x, AttentionInputs(grid, num_carried, before, after, key_mask,
                                  method.wants_cls_attention(layer), self.op_of(ctx, layer))

    def op_of(self, ctx, layer):
        """``op(name, module, x)`` that runs block ``layer``'s (or, with ``layer`` None, the
        embedding's and final norm's) frozen operations through the method's ``adapt``, or
        None where the method changes none of them."""
        method = self.prompt
        if method is None or not method.adapts_ops:
            return None
        return partial(method.adapt, ctx, layer)

    def embed_patches(self, img, op):
        """The timm patch embedding of ``img`` through ``op`` (:meth:`op_of`): one operation,
        ``'patch_embed'``, or where the embedding normalises its projection (Swin) two, the
        projection ``'patch_proj'`` then the norm ``'patch_embed'`` (SSF's Swin code scales
        and shifts after each)."""
        patch_embed = self.timm_model.patch_embed
        if op is None or isinstance(patch_embed.norm, nn.Identity):
            return run_op(op, 'patch_embed', patch_embed, img)
        x = op('patch_proj', partial(project_patches, patch_embed), img)
        return op('patch_embed', patch_embed.norm, x)

    def attend(self, block, x, inputs):
        """Block attention on the normalised sequence ``x`` with what :class:`AttentionInputs`
        ``inputs`` adds: (B, S, C) outputs, and the CLS attention row over every key if
        ``inputs.cls_row``, else None."""
        raise NotImplementedError

    def plain_block(self, block, x, grid):
        """The timm block on the sequence, without a method."""
        raise NotImplementedError

    def sequence_keys(self, block, x, num_carried):
        """How many keys of the sequence ``x`` each query attends to."""
        raise NotImplementedError

    def load_pretrained(self, path):
        raise NotImplementedError

    def init_weights(self):
        """Loads ``init_cfg``'s pretrained checkpoint into the timm model (the prompts keep
        their own init), then derives the method's tensors from the loaded weights."""
        cfg = self.init_cfg
        if self.pretrained_checkpoint is not None:
            self.load_pretrained(cfg['checkpoint'])
            print_log(f'{type(self).__name__}: loaded {cfg["checkpoint"]}', logger='current')
            self._is_init = True
        elif cfg is not None:
            super().init_weights()
        self.derive_from_frozen()
        self.backbone_ready = True

    @property
    def pretrained_checkpoint(self):
        """The checkpoint file of a ``Pretrained`` ``init_cfg``, else None."""
        cfg = self.init_cfg
        return (cfg['checkpoint'] if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'
                else None)

    @staticmethod
    def _record_pretrained(backbone, state_dict, prefix, local_metadata):
        # The state dict's metadata (saved with it) remembers the backbone it was tuned on,
        # for loaders that drop init_cfg before building (mmseg's init_model).
        if backbone.pretrained_checkpoint is not None:
            local_metadata['pretrained'] = backbone.pretrained_checkpoint

    @staticmethod
    def _complete_tuned_only_state(backbone, state_dict, prefix, local_metadata, *_):
        """Puts the frozen backbone under a checkpoint that carries none of it (mmvpt's
        tuned-only checkpoints), whatever loads it: MMEngine's runner, ``load_checkpoint``,
        mmpretrain's and mmseg's inferencers, ``load_state_dict``.

        A backbone whose weights are not in place yet loads its ``init_cfg`` checkpoint
        first (or, when a loader dropped ``init_cfg``, the one the checkpoint was tuned on, as
        its metadata records); then the frozen tensors are handed to the load with the checkpoint's,
        so it is complete (strict loading passes, nothing is reported missing). Without a
        pretrained checkpoint to load, the frozen part would stay random: that fails, and
        so does a checkpoint whose prompt tensors do not fit.
        """
        local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        frozen = [name for name, p in backbone.named_parameters()
                  if not p.requires_grad and not name.startswith('prompt.')]
        tuned_only = bool(frozen) and not any(name in local for name in frozen)
        if tuned_only or any(k.startswith('prompt.') for k in local):
            # Missing prompts are the loader's to report (a partial load may be meant).
            check_checkpoint_fit(backbone, local, 'the checkpoint', complete=False)
        if not tuned_only:
            if frozen:  # the checkpoint brings the frozen backbone itself
                backbone.backbone_ready = True
            return
        name = type(backbone).__name__
        if not backbone.backbone_ready:
            recorded = local_metadata.get('pretrained')
            if backbone.pretrained_checkpoint is None and recorded is None:
                raise RuntimeError(
                    f'the checkpoint loaded into {name} ({prefix.rstrip(".") or "the model"}) '
                    'holds only tuned tensors, and the backbone has no pretrained checkpoint to '
                    'put under them: set model.backbone.init_cfg=dict(type=\'Pretrained\', '
                    'checkpoint=PATH) in the config')
            if backbone.pretrained_checkpoint is None:  # the config's init_cfg was dropped
                backbone.init_cfg = dict(type='Pretrained', checkpoint=recorded)
            print_log(f'{name}: the checkpoint holds only tuned tensors; loading the pretrained '
                      f'backbone {backbone.pretrained_checkpoint} under them', logger='current')
            backbone.init_weights()
        # The prompts must come from the checkpoint: a missing one stays reported.
        for key, value in backbone.state_dict().items():
            if not key.startswith('prompt.'):
                state_dict.setdefault(prefix + key, value)

    def merge_method(self):
        """Folds the method into the frozen weights where it can be (LoRA, SSF, BitFit):
        the plain timm model then computes what the method did, at no extra cost, and
        the backbone runs without a method. Returns the backbone."""
        method = self.prompt
        if method is None:
            return self
        if getattr(method, 'num_tasks', None) is not None:
            raise ValueError('a method holding several tasks cannot be merged into one backbone')
        merge_into = getattr(method, 'merge_into', None)
        if merge_into is None:
            raise NotImplementedError(
                f'{type(method).__name__} adds tokens, keys or a cross-attention: '
                'it cannot be merged into the frozen weights')
        with torch.no_grad():
            merge_into(self)
        self.prompt = None
        return self

    def derive_from_frozen(self):
        """(Re)computes what the method derives from the frozen weights (its
        ``derived_from_frozen``: CVPT's own cross-attention copies, DoRA's magnitudes) from
        the backbone's current ones."""
        if self.prompt is not None:
            with torch.no_grad():
                self.prompt.derive_from_frozen(self)


def merge_methods(model):
    """Folds the method of every prompted backbone in ``model`` into its frozen weights
    (:meth:`PromptedBackbone.merge_method`); returns the merged methods' names. A model
    without a method to merge, or with one that cannot be merged, raises a ValueError (a
    user's error to the tools) that says why."""
    merged = []
    for module in model.modules():
        if isinstance(module, PromptedBackbone) and module.prompt is not None:
            name = type(module.prompt).__name__
            try:
                module.merge_method()
            except NotImplementedError as err:
                raise ValueError(str(err)) from None
            merged.append(name)
    if not merged:
        raise ValueError('merge: the model has no method to merge (model.backbone.prompt is None)')
    return merged


def _mlp_dim(block):
    """The hidden width of a timm block's MLP (its first linear's outputs)."""
    fc1 = getattr(block.mlp, 'fc1', None)
    return fc1.out_features if isinstance(fc1, nn.Linear) else 4 * block.norm1.normalized_shape[0]


def _plus(x, term):
    """``x + term``, or ``x`` where the method adds no term."""
    return x if term is None else x + term


def project_patches(patch_embed, img):
    """timm ``PatchEmbed.forward`` without its norm: padding, projection, token layout."""
    if patch_embed.dynamic_img_pad:
        patch_h, patch_w = patch_embed.patch_size
        img = F.pad(img, (0, -img.shape[-1] % patch_w, 0, -img.shape[-2] % patch_h))
    x = patch_embed.proj(img)
    if patch_embed.flatten:
        return x.flatten(2).transpose(1, 2)  # (B, N, C)
    return x if patch_embed.output_fmt == Format.NCHW else nchw_to(x, patch_embed.output_fmt)
