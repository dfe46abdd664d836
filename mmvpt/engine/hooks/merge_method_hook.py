from mmengine.hooks import Hook

from mmvpt.models.backbones.base import merge_methods
from mmvpt.registry import HOOKS

from .tuned_checkpoint_hook import unwrap


@HOOKS.register_module()
class MergeMethodHook(Hook):
    """Folds the backbone's method into its frozen weights once the tested checkpoint is
    in place (``tools/test.py --merge``): LoRA, SSF and BitFit are then tested at the
    frozen backbone's cost, as they would be deployed. A method that cannot be merged
    (the bottleneck adapters, the prompt methods) stops the test before it starts, saying
    why."""
    priority = 'VERY_LOW'  # after the hooks that bind or load the method's tensors

    def before_test(self, runner):
        merged = merge_methods(unwrap(runner.model))
        runner.logger.info(f'{", ".join(merged)} merged into the frozen weights: testing the '
                           'plain backbone')
