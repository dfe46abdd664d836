"""What a tuned-only checkpoint holds, and whether a checkpoint fits a prompted model."""
from mmvpt.models.prompts.base import PromptMethod

from .vit_checkpoint import CheckpointMismatchError


def prompt_methods(model):
    """(name, module) of every prompt method inside ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PromptMethod)]


def describe_prompts(model):
    """{module name: method class name} of the prompt methods in ``model``."""
    return {prefix: type(method).__name__ for prefix, method in prompt_methods(model)}


def tuned_state_keys(model):
    """State-dict keys of what training changes or cannot recover from the pretrained
    backbone: every parameter with ``requires_grad``, the buffers of modules that train
    (e.g. BatchNorm statistics of a segmentation head), and every tensor of a prompt method
    (frozen random cross-attention copies and pruning masks included)."""
    keys = {name for name, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            keys.update(f'{prefix}.{name}' if prefix else name
                        for name, _ in module.named_buffers(recurse=False))
    for prefix, method in prompt_methods(model):
        keys.update(f'{prefix}.{key}' for key in method.state_dict())
    return keys & set(model.state_dict())


def check_checkpoint_fit(model, state, source='the checkpoint', saved_prompts=None,
                         complete=True, merged=None):
    """Fails with a :class:`CheckpointMismatchError` naming the keys when ``state`` (a
    state dict for ``model``) does not fit it: other prompt methods (``saved_prompts``, from
    the checkpoint's meta), tensors of another shape, unknown prompt tensors and, if
    ``complete`` (a whole checkpoint, not a partial load), missing ones. A checkpoint with
    methods ``merged`` into its weights ({module name: class name}, from its meta) into a
    model that has them fails naming the setting that loads it."""
    expected_prompts = describe_prompts(model)
    unmerged = [module for module in merged or {} if module in expected_prompts]
    if unmerged:
        raise CheckpointMismatchError(
            f'{source} holds {", ".join(merged[m] for m in unmerged)} merged into the frozen '
            'weights (a model without the method): load it with --cfg-options '
            + ' '.join(f'model.{m}=None' for m in unmerged))
    if saved_prompts is not None and saved_prompts != expected_prompts:
        raise CheckpointMismatchError(
            f'{source} was tuned with prompt methods {saved_prompts}, but the config builds '
            f'{expected_prompts}')
    own = model.state_dict()
    problems = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                for k, v in state.items()
                if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
    prompt_prefixes = tuple(f'{p}.' for p in expected_prompts)
    if complete:
        problems += [f'{k}: not in the checkpoint' for k in sorted(tuned_state_keys(model))
                     if k not in state and k.startswith(prompt_prefixes)]
    problems += [f'{k}: not in the model' for k in sorted(state)
                 if k not in own and ('.prompt.' in k or k.startswith('prompt.'))]
    if problems:
        raise CheckpointMismatchError(
            f'{source} does not fit the model: ' + '; '.join(problems[:10])
            + (f' (+{len(problems) - 10} more)' if len(problems) > 10 else ''))
