"""Tuned-only checkpoints: what mmvpt writes into them and reads back, in one place.

A tuned-only checkpoint is an MMEngine checkpoint whose ``state_dict`` holds only what
training changed (:func:`~mmvpt.models.utils.tuned_state.tuned_state_keys`) and whose
``meta['mmvpt']`` says so and names the prompt methods::

    meta['mmvpt'] = dict(tuned_only=True, prompts={'backbone.prompt': 'CVPT'})

A merged checkpoint (``tools/misc/merge_method.py``) holds the whole model with its method
folded into the frozen weights; its ``meta['mmvpt']`` names what was merged, so that a config
of the method can be fitted to it (:func:`fit_config_to_merged`)::

    meta['mmvpt'] = dict(tuned_only=False, prompts={}, merged={'backbone.prompt': 'LoRA'})

:class:`~mmvpt.engine.hooks.TunedCheckpointHook` writes them during training; tests, the
benchmark's random tasks and ``MultiTaskModel`` write or read them through these functions.
Whether a checkpoint fits a model is
:func:`~mmvpt.models.utils.tuned_state.check_checkpoint_fit`'s to say.
"""
import torch
from mmengine.logging import print_log

from mmvpt.models.utils.tuned_state import describe_prompts, tuned_state_keys

from .checkpoint_loading import load_local_checkpoint

META_KEY = 'mmvpt'


def tuned_meta(model, tuned_only=True):
    """``meta['mmvpt']`` of a checkpoint of ``model``."""
    return dict(tuned_only=tuned_only, prompts=describe_prompts(model))


def saved_prompts(meta):
    """The prompt methods a checkpoint's ``meta`` records ({module name: class name}); None
    for a checkpoint mmvpt did not write."""
    return (meta or {}).get(META_KEY, {}).get('prompts')


def merged_meta(merged):
    """``meta['mmvpt']`` of a checkpoint whose methods ``merged`` ({module name: class
    name}, as :func:`describe_prompts` named them before merging) are in its weights."""
    return dict(tuned_only=False, prompts={}, merged=dict(merged))


def merged_methods(meta):
    """{module name: class name} of the methods a merged checkpoint's ``meta`` says are
    folded into its weights; {} for any other checkpoint. (Checkpoints merged before
    ``meta['mmvpt']`` recorded it name the backbone's method in ``meta['merged']``.)"""
    meta = meta or {}
    merged = meta.get(META_KEY, {}).get('merged')
    if merged is None and isinstance(meta.get('merged'), str):
        merged = {'backbone.prompt': meta['merged']}
    return dict(merged or {})


def checkpoint_meta(path):
    """The checkpoint's ``meta`` (memory-mapped: its tensors are not read)."""
    try:
        checkpoint = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    except Exception:  # an older pickle format, or objects beyond tensors: read it whole
        checkpoint = load_local_checkpoint(path, map_location='cpu')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def remove_methods(cfg, modules):
    """Sets ``model.<module>=None`` in ``cfg`` for each of ``modules`` (prompt method module
    names: ``backbone.prompt``) that the config sets; returns the settings made."""
    settings = []
    for module in modules:
        *parents, leaf = module.split('.')
        node = cfg.model
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) is not None:
            node[leaf] = None
            settings.append(f'model.{module}=None')
    return settings


def fit_config_to_merged(cfg, checkpoint):
    """Sets ``model.<module>=None`` in ``cfg`` for every method that the checkpoint file
    ``checkpoint`` has merged into its weights (``tools/misc/merge_method.py``): the method's
    own config then loads the merged model, as ``--cfg-options model.backbone.prompt=None``
    would. Says so in one line; returns the settings made (none for other checkpoints)."""
    try:
        merged = merged_methods(checkpoint_meta(checkpoint))
    except Exception:  # an unreadable file: the loading that follows says what is wrong
        return []
    settings = remove_methods(cfg, merged)
    if settings:
        print_log(f'{checkpoint} holds {", ".join(merged.values())} merged into the frozen '
                  f'weights: loading it with {" ".join(settings)}', logger='current')
    return settings


def tuned_state(model, state_dict=None):
    """``state_dict`` (default: ``model``'s own) cut to the tuned tensors of ``model``. The
    state dict's metadata stays with it: module versions, and the pretrained backbone the
    tensors were tuned on."""
    state = model.state_dict() if state_dict is None else state_dict
    keys = tuned_state_keys(model)
    tuned = type(state)((k, v) for k, v in state.items() if k in keys)
    if hasattr(state, '_metadata'):
        tuned._metadata = state._metadata
    return tuned


def make_tuned_only(checkpoint, model, tuned_only=True):
    """Turns ``checkpoint`` (an MMEngine checkpoint dict of ``model``) into what mmvpt saves:
    ``meta['mmvpt']`` set and, if ``tuned_only``, the state dict cut to the tuned tensors."""
    checkpoint.setdefault('meta', {})[META_KEY] = tuned_meta(model, tuned_only)
    if tuned_only:
        checkpoint['state_dict'] = tuned_state(model, checkpoint['state_dict'])
    return checkpoint


def save_tuned_checkpoint(path, model, state_dict=None, meta=None):
    """Saves ``model`` (or ``state_dict``, a state dict of it) as a tuned-only checkpoint at
    ``path``, as :class:`~mmvpt.engine.hooks.TunedCheckpointHook` saves one; ``meta``: more
    entries for the checkpoint's meta (``dataset_meta``, ``cfg``). Returns ``path`` as str."""
    state = model.state_dict() if state_dict is None else state_dict
    checkpoint = make_tuned_only(dict(meta=dict(meta or {}), state_dict=state), model)
    torch.save(checkpoint, path)
    return str(path)


def load_tuned_checkpoint(path, map_location='cpu'):
    """(state dict, meta) of a checkpoint file, tuned-only or full: DDP's ``module.``
    prefixes removed, the state dict's metadata kept, ``meta`` a dict (empty if none)."""
    checkpoint = load_local_checkpoint(path, map_location=map_location)
    state = checkpoint.get('state_dict', checkpoint)
    metadata = getattr(state, '_metadata', None)
    state = type(state)((k[len('module.'):] if k.startswith('module.') else k, v)
                        for k, v in state.items())
    if metadata is not None:
        state._metadata = metadata
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    return state, meta
