"""Checkpoints that hold only what was tuned, and their loading back onto a pretrained
backbone."""
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper

from mmvpt.models.utils.tuned_state import check_checkpoint_fit, prompt_methods, tuned_state_keys
from mmvpt.registry import HOOKS
from mmvpt.utils.tuned_checkpoint import make_tuned_only, merged_methods, saved_prompts

__all__ = ['TunedCheckpointHook', 'prompt_methods', 'tuned_state_keys', 'unwrap']


def unwrap(model):
    """The model itself, out of DDP and test-time-augmentation wrappers (MMEngine loads
    checkpoints into the wrapped model the same way)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


@HOOKS.register_module()
class TunedCheckpointHook(Hook):
    """Saves only the tuned part of the model in every checkpoint and loads such
    checkpoints back onto the pretrained backbone.

    Saving (:func:`mmvpt.utils.tuned_checkpoint.make_tuned_only`): ``state_dict`` keeps
    :func:`tuned_state_keys` (prompts, their masks, the head, ...), and ``meta['mmvpt']``
    records the prompt methods. A ViT-B CVPT P=10 checkpoint is
    then well under 1 MB instead of ~330 MB (the optimizer state, kept for resuming, holds
    only tuned tensors too).

    Loading: a checkpoint whose prompt method or tensor shapes do not match the config
    fails with the keys named, before anything is loaded. The prompted backbone itself puts
    its pretrained weights (``init_cfg``) under a tuned-only checkpoint, by any loading route
    (``load_from``, ``--resume``, ``tools/test.py``, the mmpretrain / mmseg inferencers).

    Args:
        tuned_only: False keeps full checkpoints (still checked when loading).
    """
    priority = 'VERY_HIGH'

    def __init__(self, tuned_only=True):
        self.tuned_only = tuned_only

    def before_save_checkpoint(self, runner, checkpoint):
        make_tuned_only(checkpoint, unwrap(runner.model), self.tuned_only)

    def after_load_checkpoint(self, runner, checkpoint):
        model = unwrap(runner.model)
        state = {k[len('module.'):] if k.startswith('module.') else k: v
                 for k, v in checkpoint.get('state_dict', checkpoint).items()}
        # Fail before anything is loaded (the backbone checks again, for the other routes).
        check_checkpoint_fit(model, state, getattr(runner, '_load_from', None) or 'checkpoint',
                             saved_prompts(checkpoint.get('meta')),
                             merged=merged_methods(checkpoint.get('meta')))
