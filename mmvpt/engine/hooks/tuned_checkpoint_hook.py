"""Checkpoints that hold only what was tuned, and their loading back onto a pretrained
backbone."""
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper

from mmvpt.models.prompts import PromptMethod
from mmvpt.models.utils.vit_checkpoint import CheckpointMismatchError
from mmvpt.registry import HOOKS


def unwrap(model):
    """The model itself, out of DDP and test-time-augmentation wrappers (MMEngine loads
    checkpoints into the wrapped model the same way)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def prompt_methods(model):
    """(name, module) of every prompt method inside ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PromptMethod)]


def tuned_state_keys(model):
    """State-dict keys of what training changes or cannot recover from the pretrained
    backbone: every parameter with ``requires_grad`` and every tensor of a prompt method
    (frozen random cross-attention copies and pruning masks included)."""
    keys = {name for name, p in model.named_parameters() if p.requires_grad}
    for prefix, method in prompt_methods(model):
        keys.update(f'{prefix}.{key}' for key in method.state_dict())
    return keys


def describe_prompts(model):
    return {prefix: type(method).__name__ for prefix, method in prompt_methods(model)}


@HOOKS.register_module()
class TunedCheckpointHook(Hook):
    """Saves only the tuned part of the model in every checkpoint and loads such
    checkpoints back onto the pretrained backbone.

    Saving: ``state_dict`` keeps :func:`tuned_state_keys` (prompts, their masks, the head,
    ...), and ``meta['mmvpt']`` records the prompt methods. A ViT-B CVPT P=10 checkpoint is
    then well under 1 MB instead of ~330 MB (the optimizer state, kept for resuming, holds
    only tuned tensors too).

    Loading (``load_from``, ``--resume``, ``tools/test.py``): a checkpoint whose prompt
    method or tensor shapes do not match the config fails with the keys named, before
    anything is loaded, and a tuned-only checkpoint first gets the pretrained backbone
    (``init_cfg``) loaded under it when the model was not initialised yet (test path).

    Args:
        tuned_only: False keeps full checkpoints (still checked when loading).
    """
    priority = 'VERY_HIGH'

    def __init__(self, tuned_only=True):
        self.tuned_only = tuned_only

    def before_save_checkpoint(self, runner, checkpoint):
        model = unwrap(runner.model)
        checkpoint.setdefault('meta', {})['mmvpt'] = dict(
            tuned_only=self.tuned_only, prompts=describe_prompts(model))
        if self.tuned_only:
            keys = tuned_state_keys(model)
            state = checkpoint['state_dict']
            checkpoint['state_dict'] = type(state)((k, v) for k, v in state.items() if k in keys)

    def after_load_checkpoint(self, runner, checkpoint):
        model = unwrap(runner.model)
        state = {k[len('module.'):] if k.startswith('module.') else k: v
                 for k, v in checkpoint.get('state_dict', checkpoint).items()}
        meta = checkpoint.get('meta', {}).get('mmvpt', {})
        self._check(model, state, meta, getattr(runner, '_load_from', None) or 'checkpoint')
        if meta.get('tuned_only'):
            if not getattr(model, '_is_init', False):
                # Test path: the runner never initialised the model; the backbone comes
                # from its init_cfg, the tuned tensors from this checkpoint right after.
                model.init_weights()
            # The frozen part is what the model holds now: hand it to the loader too, so
            # the load is complete rather than a warning about every backbone key.
            target = checkpoint['state_dict']
            for key, value in model.state_dict().items():
                target.setdefault(key, value)

    @staticmethod
    def _check(model, state, meta, source):
        expected_prompts = describe_prompts(model)
        saved_prompts = meta.get('prompts')
        if saved_prompts is not None and saved_prompts != expected_prompts:
            raise CheckpointMismatchError(
                f'{source} was tuned with prompt methods {saved_prompts}, but the config builds '
                f'{expected_prompts}')
        own = model.state_dict()
        tuned = tuned_state_keys(model)
        problems = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                    for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        prompt_prefixes = tuple(f'{p}.' for p in expected_prompts)
        problems += [f'{k}: not in the checkpoint' for k in sorted(tuned)
                     if k not in state and k.startswith(prompt_prefixes)]
        problems += [f'{k}: not in the model' for k in sorted(state)
                     if k not in own and ('.prompt.' in k or k.startswith('prompt.'))]
        if problems:
            raise CheckpointMismatchError(
                f'{source} does not fit the model: ' + '; '.join(problems[:10])
                + (f' (+{len(problems) - 10} more)' if len(problems) > 10 else ''))
