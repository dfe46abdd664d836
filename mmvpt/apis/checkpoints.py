"""Checkpoints converted for use without mmvpt's method: a trained LoRA, DoRA, SSF or BitFit
folded into the frozen weights (:func:`merge_checkpoint`, ``tools/misc/merge_method.py``),
saved as an MMEngine checkpoint of the whole model and, optionally, the backbone alone in
timm's key names.

It builds and loads the model as inference does (:func:`~mmvpt.apis.inference.load_model`),
so it is here rather than beside the key-name converters of pretrained weights
(``mmvpt/models/utils/*_checkpoint.py``): mmvpt.models does not import mmvpt.apis.
"""
import os
import os.path as osp

from mmvpt.utils.tuned_checkpoint import checkpoint_meta

from .inference import InputError, load_model, merge_into_weights

# How many differing settings the line on the config used names.
_SHOWN_DIFFERENCES = 6


def _flat(node, prefix):
    """(dotted key, value) of every leaf of a nested config; tuples read as lists (a saved
    config's text may write either)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flat(value, f'{prefix}.{key}')
    elif isinstance(node, (list, tuple)):
        yield prefix, [dict(v) if isinstance(v, dict) else v for v in node]
    else:
        yield prefix, node


def _model_differences(saved, given):
    """``key=value`` of the saved config's model settings that the given config lacks."""
    given = dict(_flat(given.model.to_dict(), 'model'))
    return [f'{key}={value!r}' for key, value in _flat(saved.model.to_dict(), 'model')
            if key not in given or given[key] != value]


def merge_config(config, checkpoint, cfg_options=None, meta=None):
    """(config, saved, line) to merge ``checkpoint`` with: the config saved in the checkpoint
    (``meta['cfg']``, which MMEngine's runner writes, with the training run's --cfg-options
    applied) when it has one (``saved``), else the file ``config``; ``cfg_options`` on top of
    either. The line says which was used and, for the saved one, the model settings that the
    file lacks. ``meta``: the checkpoint's, if already read."""
    from mmengine.config import Config
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    given = Config.fromfile(config)
    if cfg_options:
        given.merge_from_dict(cfg_options)
    saved = (checkpoint_meta(checkpoint) if meta is None else meta).get('cfg')
    if not isinstance(saved, str) or not saved.strip():
        return given, False, (f'config: {config} (with --cfg-options)' if cfg_options else
                       f'config: {config}') + f'; {checkpoint} saves none'
    try:
        cfg = Config.fromstring(saved, '.py')
    except Exception as err:  # a text of another MMEngine version, say: the file then
        return given, False, (f'config: {config}; the one saved in {checkpoint} cannot be read '
                       f'({type(err).__name__}: {str(err).splitlines()[0]})')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    differences = _model_differences(cfg, given)
    line = f'config: the one saved in {checkpoint} (as trained, its --cfg-options included)'
    if differences:
        more = len(differences) - _SHOWN_DIFFERENCES
        line += (f', not {config}: it sets ' + ', '.join(differences[:_SHOWN_DIFFERENCES])
                 + (f' (+{more} more)' if more > 0 else ''))
    return cfg, True, line


def merge_checkpoint(config, checkpoint, out, timm_out=None, cfg_options=None):
    """Loads ``checkpoint`` and folds its method into the frozen weights
    (:meth:`~mmvpt.models.backbones.base.PromptedBackbone.merge_method`; LoRA, SSF, BitFit),
    then saves the whole model at ``out`` as an MMEngine checkpoint whose saved config has
    no method (``model.backbone.prompt=None``, no ``init_cfg``) and whose
    ``meta['mmvpt']['merged']`` names the method merged (so that the method's config loads it:
    :func:`~mmvpt.utils.tuned_checkpoint.fit_config_to_merged`) and, given ``timm_out``, the
    backbone alone in timm's key names. The model is built from the config the checkpoint
    saved, if any (:func:`merge_config`; the line saying which is logged). Returns the
    method's display name."""
    import torch
    from mmengine.logging import print_log

    from mmvpt.models.prompts import display_name
    from mmvpt.models.utils import CheckpointMismatchError
    from mmvpt.models.utils.tuned_state import describe_prompts
    from mmvpt.utils.tuned_checkpoint import META_KEY, merged_meta, merged_methods, remove_methods
    inputs = (osp.realpath(checkpoint), osp.realpath(config))
    for path in (out, timm_out):
        if path is not None and osp.realpath(path) in inputs:
            raise InputError(f'{path}: would overwrite an input; name another file')
    source_meta = checkpoint_meta(checkpoint)
    merged = merged_methods(source_meta)
    if merged:
        raise InputError(f'{checkpoint}: holds {", ".join(merged.values())} merged into the '
                         'frozen weights already; nothing is left to merge')
    merge_cfg, saved, line = merge_config(config, checkpoint, cfg_options, source_meta)
    print_log(line, logger='current')
    try:
        model, cfg = load_model(merge_cfg, checkpoint)
    except CheckpointMismatchError as err:
        if saved:
            raise
        raise CheckpointMismatchError(f'{err}; {checkpoint} saves no config: pass the '
                                      '--cfg-options it was trained with') from None
    name = display_name(model.backbone.prompt)
    prompts = describe_prompts(model)
    merge_into_weights(model, config)
    remove_methods(cfg, prompts)
    cfg.model.backbone.init_cfg = None  # the merged weights are in the checkpoint
    meta = {'cfg': cfg.pretty_text, 'merged': name, META_KEY: merged_meta(prompts)}
    if source_meta.get('dataset_meta'):
        meta['dataset_meta'] = source_meta['dataset_meta']
    for path, state in ((out, dict(state_dict=model.state_dict(), meta=meta)),
                        (timm_out, model.backbone.timm_model.state_dict())):
        if path is not None:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            torch.save(state, path)
    return name
