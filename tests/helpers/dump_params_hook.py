"""A test-only hook: every rank writes its trainable parameters before and after training,
so a test can check that distributed ranks end with the same, changed, weights."""
import os.path as osp

import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class DumpParamsHook(Hook):

    def _dump(self, runner, stage):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
        buffers = {name: b.detach().cpu().clone() for name, b in model.named_buffers()}
        torch.save(dict(params=params, buffers=buffers, world_size=get_world_size()),
                   osp.join(runner.work_dir, f'params_{stage}_rank{get_rank()}.pth'))

    def before_train(self, runner):
        self._dump(runner, 'before')

    def after_train(self, runner):
        self._dump(runner, 'after')
