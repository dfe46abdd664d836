"""E²VPT pruning and rewinding inside one MMEngine run."""
import json
import math
import os.path as osp

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmvpt.models.prompts.base import check_choices
from mmvpt.registry import HOOKS
from mmvpt.utils.atomic_io import atomic_write
from mmvpt.utils.param_report import format_parameter_report, parameter_report

from ..e2vpt_pruning import mean_gradients
from .tuned_checkpoint_hook import prompt_methods, unwrap

SCORES = ('abs', 'signed')
SCOPES = ('block', 'shared')
REWINDS = ('init', 'reinit')


def _check_fraction(name, value, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f'PromptPruningHook {name}={value!r}: a pruning fraction must lie in '
                         '(0, 1)')


def keep_top(scores, fraction, minimum=1):
    """0/1 mask over the last dim keeping the highest scores, pruning ``fraction`` of them
    (rounded down) and never keeping fewer than ``minimum``."""
    count = scores.shape[-1]
    keep = max(minimum, count - math.floor(fraction * count))
    mask = torch.zeros_like(scores)
    return mask.scatter_(-1, scores.topk(keep, dim=-1).indices, 1.)


@HOOKS.register_module()
class PromptPruningHook(Hook):
    """Train (stage 1), score, prune tokens then segments, rewind, train again (stage 2).

    At the end of stage 1 (``prune_after`` epochs, or iterations with ``by_epoch=False``)
    the importance of each visual prompt token is S_k = E_x |dL/d rho_k| (``score='abs'``;
    ``'signed'`` drops the absolute value as the official code does), taken at rho = 1 over
    one pass of the training data and all-reduced over ranks, so every rank prunes the same
    tokens. The lowest ``token_fraction`` are pruned per block (``scope='block'``) or with
    one mask for all blocks (``'shared'``, official code), at least one token staying; only
    the method's ``prunable_layers`` are pruned (all of a ViT, the first stage of a Swin). Then
    segments of the kept tokens are scored the same way on the token-pruned model and the
    lowest ``segment_fraction`` pruned (cascade). Rewinding: the tuned tensors go back to
    their values at the start of training (``rewind='init'``) or the prompts get a fresh
    random init (``'reinit'``, official code; the head goes back to its start values);
    the optimizer state is cleared, the learning rates return to their initial values and
    the param schedulers start again for stage 2, so set ``max_epochs`` to both stages.

    The result (kept tokens and segments per block, scores) is stored in every checkpoint
    and written to ``<work_dir>/prompt_pruning.json``; resuming at any point restores it.
    Scoring runs the model in eval mode (no prompt dropout) without touching parameter
    gradients.

    Args:
        prune_after: length of stage 1.
        token_fraction: fraction of tokens to prune, in (0, 1).
        segment_fraction: fraction of kept tokens' segments to prune, in (0, 1), or None.
        score: ``'abs'`` or ``'signed'``.
        scope: ``'block'`` or ``'shared'``.
        rewind: ``'init'`` or ``'reinit'``.
        by_epoch: ``prune_after`` counts epochs (True) or iterations.
        max_batches: score on at most this many batches (None: the whole training set).
    """
    priority = 80  # after ParamSchedulerHook (70) steps, before CheckpointHook (90) saves
    #: the methods it belongs to: a config whose model has none of them goes without it
    #: (``mmvpt.utils.drop_method_hooks``)
    serves = 'methods with prunable prompts (E2VPT)'

    @staticmethod
    def serves_method(method_class):
        return hasattr(method_class, 'prunable')

    def __init__(self, prune_after, token_fraction=0.5, segment_fraction=None, score='abs',
                 scope='block', rewind='init', by_epoch=True, max_batches=None):
        if not isinstance(prune_after, int) or prune_after < 1:
            raise ValueError(f'PromptPruningHook prune_after={prune_after!r}: a positive int')
        _check_fraction('token_fraction', token_fraction)
        _check_fraction('segment_fraction', segment_fraction, optional=True)
        check_choices('PromptPruningHook', score=(score, SCORES), scope=(scope, SCOPES),
                      rewind=(rewind, REWINDS))
        self.prune_after = prune_after
        self.token_fraction = token_fraction
        self.segment_fraction = segment_fraction
        self.score = score
        self.scope = scope
        self.rewind = rewind
        self.by_epoch = by_epoch
        self.max_batches = max_batches
        self.pruned = False
        self.initial_state = None
        self.result = None

    # -- state kept in checkpoints -----------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['prompt_pruning'] = dict(pruned=self.pruned, initial_state=self.initial_state,
                                            result=self.result)

    def after_load_checkpoint(self, runner, checkpoint):
        state = checkpoint.get('prompt_pruning')
        if state is not None:
            self.pruned = state['pruned']
            self.initial_state = state['initial_state']
            self.result = state['result']

    # -- stages --------------------------------------------------------------------------------
    def _methods(self, runner):
        methods = [(name, m) for name, m in prompt_methods(unwrap(runner.model))
                   if getattr(m, 'prunable', False)]
        if not methods:
            found = [type(m).__name__ for _, m in prompt_methods(unwrap(runner.model))]
            raise ValueError('PromptPruningHook needs a prompt method with prunable visual '
                             'prompts (mmvpt.E2VPT with num_tokens > 0); the model has '
                             f'{found or "none"}')
        return methods

    def before_train(self, runner):
        self._methods(runner)
        if self.initial_state is None:  # a fresh run, not a resumed one
            model = unwrap(runner.model)
            self.initial_state = {n: p.detach().cpu().clone()
                                  for n, p in model.named_parameters() if p.requires_grad}

    def after_train_epoch(self, runner):
        if self.by_epoch and not self.pruned and runner.epoch + 1 == self.prune_after:
            self.prune_and_rewind(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.by_epoch and not self.pruned and runner.iter + 1 == self.prune_after:
            self.prune_and_rewind(runner)

    def prune_and_rewind(self, runner):
        methods = self._methods(runner)
        result = {}
        token_scores = self._scores(runner, [m.token_mask for _, m in methods])
        for (name, method), scores in zip(methods, token_scores):
            result[name] = dict(token_scores=scores.tolist())
            scores = scores[method.prunable_layers]  # Swin: first stage only
            ranked = self._ranked(scores)
            method.token_mask[method.prunable_layers] = keep_top(ranked, self.token_fraction)
        if self.segment_fraction is not None:
            segment_scores = self._scores(runner, [m.segment_mask for _, m in methods])
            for (name, method), scores in zip(methods, segment_scores):
                result[name]['segment_scores'] = scores.tolist()
                scores = scores[method.prunable_layers]
                kept = method.token_mask[method.prunable_layers].bool().unsqueeze(-1)
                kept = kept.expand_as(scores)
                ranked = self._ranked(scores)
                # Each kept token keeps its best segment; pruned tokens have none to lose.
                best = torch.zeros_like(kept).scatter_(-1, ranked.argmax(-1, keepdim=True), True)
                protected = ~kept | best
                num_kept, num_tokens = int(kept[0].sum()), int(kept[0, :, 0].sum())
                prune = min(math.floor(self.segment_fraction * num_kept), num_kept - num_tokens)
                lowest = ranked.masked_fill(protected, float('inf')).flatten(1).argsort(-1)
                lowest = lowest[:, :prune]
                mask = kept.float().flatten(1).scatter_(-1, lowest, 0.).view_as(ranked)
                method.segment_mask[method.prunable_layers] = mask
        for name, method in methods:
            method.masks_changed()  # a compiled forward reads the new masks from here
            result[name].update(
                kept_tokens=[row.nonzero().flatten().tolist() for row in method.token_mask],
                kept_segments=[[seg.nonzero().flatten().tolist() for seg in block]
                               for block in method.segment_mask])
        self._rewind(runner, methods)
        self.pruned = True
        self.result = result
        self._export(runner)
        print_log(f'prompt pruning done; {format_parameter_report(parameter_report(runner.model))}',
                  logger='current')

    def _scores(self, runner, masks):
        """E_x of dL/d(mask) (abs or signed) over the training data, mean over ranks."""
        scores, _ = mean_gradients(runner.model, runner.train_dataloader, masks, self.max_batches,
                                   absolute=self.score == 'abs')
        return scores

    def _ranked(self, scores):
        """The (layers, ...) scores pruning ranks by: each layer's own (``scope='block'``), or
        their mean over the layers for every layer (``'shared'``)."""
        if self.scope == 'shared':
            return scores.mean(0, keepdim=True).expand_as(scores)
        return scores

    def _rewind(self, runner, methods):
        model = unwrap(runner.model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.initial_state:
                    param.copy_(self.initial_state[name].to(param.device))
            if self.rewind == 'reinit':
                for _, method in methods:
                    method.reset_parameters()
        optimizer = runner.optim_wrapper.optimizer
        optimizer.state.clear()
        for group in optimizer.param_groups:
            for key in list(group):
                if key.startswith('initial_'):
                    group[key[len('initial_'):]] = group[key]
        schedulers = runner.cfg.get('param_scheduler')
        if schedulers is not None:
            runner.param_schedulers = runner.build_param_scheduler(schedulers)

    def _export(self, runner):
        if is_main_process():
            payload = dict(token_fraction=self.token_fraction,
                           segment_fraction=self.segment_fraction, score=self.score,
                           scope=self.scope, rewind=self.rewind, prompts=self.result)
            atomic_write(osp.join(runner.work_dir, 'prompt_pruning.json'),
                         json.dumps(payload, indent=1))
