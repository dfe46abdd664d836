"""Test-only: every rank writes its whole model state right before PromptPruningHook scores,
so a test can recompute the scores from the very weights they were taken on."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class DumpBeforePruningHook(Hook):
    priority = 75  # after ParamSchedulerHook (70), before PromptPruningHook (80)

    def __init__(self, epoch):
        self.epoch = epoch  # the pruning hook's prune_after (epoch-based)

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            model = getattr(runner.model, 'module', runner.model)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            torch.save(state, osp.join(runner.work_dir, f'before_pruning_rank{get_rank()}.pth'))
