"""Test-only: records the tuned tensors right after the pruning hook has run."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class SnapshotAfterPruningHook(Hook):
    priority = 85  # after PromptPruningHook (80)

    def __init__(self, epoch):
        self.epoch = epoch
        self.before = self.after = None

    @staticmethod
    def _tuned(runner):
        model = getattr(runner.model, 'module', runner.model)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def before_train(self, runner):
        self.before = self._tuned(runner)

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            self.after = self._tuned(runner)
            self.lrs = [g['lr'] for g in runner.optim_wrapper.optimizer.param_groups]
