"""What a method derives from the frozen weights, derived again when other frozen weights
arrive, never over tensors a checkpoint brought."""
import torch
from mmengine.hooks import Hook

from mmvpt.models.backbones.base import PromptedBackbone
from mmvpt.registry import HOOKS

from .tuned_checkpoint_hook import unwrap


@HOOKS.register_module()
class FrozenInitHook(Hook):
    """Derives each method's ``derived_from_frozen`` tensors (CVPT's own cross-attention
    copies, DoRA's magnitudes) from the final frozen weights, on the train and the test path
    alike, unless a loaded checkpoint brought them.

    The backbone derives them when it is built and after ``init_cfg`` loads; a backbone that
    arrives later, by ``load_from``, gets them derived again here (``before_train`` /
    ``before_test``). What a checkpoint brought (``load_from``, ``--resume``, tools/test.py's
    checkpoint: a tuned-only or a full one) is trained and stays: its keys
    ``<...>.prompt.<name>`` or ``<...>.prompt.<name>.<...>`` are recorded per method in
    ``after_load_checkpoint``. Derived once, a later ``before_test`` leaves them alone
    (a model tested after training keeps what it learned).

    ``mmvpt.utils.add_training_hooks`` adds the hook for a method that declares derived
    tensors.
    """
    priority = 'LOW'  # after the hooks that load or check checkpoints, before merging
    #: the methods it belongs to: a config whose model has none of them goes without it
    #: (``mmvpt.utils.drop_method_hooks``)
    serves = 'methods that derive tensors from the frozen weights (CVPT, DoRA)'

    @staticmethod
    def serves_method(method_class):
        return bool(getattr(method_class, 'derived_from_frozen', ()))

    def __init__(self):
        #: {method path in the model: names that a checkpoint brought or this hook derived}
        self.settled = {}

    def after_load_checkpoint(self, runner, checkpoint):
        keys = list(checkpoint.get('state_dict', checkpoint))
        for path, backbone in prompted_backbones(unwrap(runner.model)):
            names = backbone.prompt.derived_from_frozen
            self.settled.setdefault(path, set()).update(checkpoint_names(path, names, keys))

    def before_train(self, runner):
        self._derive(runner)

    def before_test(self, runner):
        self._derive(runner)

    def _derive(self, runner):
        for path, backbone in prompted_backbones(unwrap(runner.model)):
            method = backbone.prompt
            settled = self.settled.setdefault(path, set())
            kept = [name for name in method.derived_from_frozen if name in settled]
            if len(kept) == len(method.derived_from_frozen):
                continue
            # a checkpoint that brought only some of them keeps those
            saved = {name: _state(method, name) for name in kept}
            backbone.derive_from_frozen()
            for name, state in saved.items():
                _restore(method, name, state)
            settled.update(method.derived_from_frozen)


@HOOKS.register_module()
class CrossAttentionInitHook(FrozenInitHook):
    """The name configs written before :class:`FrozenInitHook` use for it (it derived
    CVPT's cross-attention copies only)."""


def prompted_backbones(model):
    """(path of its method in ``model``, backbone) of every prompted backbone with a method."""
    return [(f'{name}.prompt' if name else 'prompt', module)
            for name, module in model.named_modules()
            if isinstance(module, PromptedBackbone) and module.prompt is not None]


def checkpoint_names(path, names, keys):
    """Those of ``names`` (relative to the method at ``path``) that the checkpoint ``keys``
    hold: ``<owner>.prompt.<name>`` or ``<owner>.prompt.<name>.<...>``, with ``<owner>`` the
    method's owner in the model or in a wrapper of it (``module.``, a test-time-augmentation
    model), or inside the checkpoint's model."""
    *owner, attr = path.split('.')
    owner = '.'.join(owner)
    found = set()
    for key in keys:
        parts = key.split('.')
        if attr not in parts:
            continue
        at = parts.index(attr)
        if not _same_owner(owner, '.'.join(parts[:at])):
            continue
        rest = '.'.join(parts[at + 1:])
        found.update(name for name in names if rest == name or rest.startswith(f'{name}.'))
    return found


def _same_owner(ours, theirs):
    # one model's path seen from inside a wrapper, or from the backbone alone ('')
    return (ours == theirs or not ours or not theirs or ours.endswith(f'.{theirs}')
            or theirs.endswith(f'.{ours}'))


def _state(method, name):
    value = getattr(method, name)
    if isinstance(value, torch.nn.Module):
        return {k: v.clone() for k, v in value.state_dict().items()}
    return value.detach().clone()


def _restore(method, name, state):
    value = getattr(method, name)
    with torch.no_grad():
        if isinstance(value, torch.nn.Module):
            value.load_state_dict(state)
        else:
            value.copy_(state)
