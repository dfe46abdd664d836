from mmengine.hooks import Hook

from mmvpt.registry import HOOKS
from .tuned_checkpoint_hook import unwrap


@HOOKS.register_module()
class CrossAttentionInitHook(Hook):
    """Fills CVPT's own cross-attention copies (``ca_init='shared'`` with
    ``ca_trainable=True``) from each block's self-attention once the final backbone weights
    are in place, on the train and the test path alike.

    ``PromptedViT.init_weights`` already does this after ``init_cfg`` loads; this hook
    covers backbones that arrive later, through ``load_from`` or a checkpoint, and leaves
    alone copies that a checkpoint brought (a resumed or tested model keeps its trained
    cross-attention).
    """
    priority = 'LOW'

    def __init__(self):
        self.loaded_from_checkpoint = False

    def after_load_checkpoint(self, runner, checkpoint):
        state = checkpoint.get('state_dict', checkpoint)
        self.loaded_from_checkpoint |= any('.cross_attn.' in key for key in state)

    def _bind(self, runner):
        if self.loaded_from_checkpoint:
            return
        for module in unwrap(runner.model).modules():
            if hasattr(module, 'bind_prompt'):
                module.bind_prompt()

    def before_train(self, runner):
        self._bind(runner)

    def before_test(self, runner):
        self._bind(runner)
