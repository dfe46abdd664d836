"""Test-only: the training process kills itself with SIGKILL (no clean-up of any kind) at a
given iteration, as a cluster scheduler or the OOM killer would."""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class KillHook(Hook):
    priority = 'LOWEST'

    def __init__(self, at_iter):
        self.at_iter = at_iter  # global iteration count, 1-based, as in the logs

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at_iter:
            os.kill(os.getpid(), signal.SIGKILL)
