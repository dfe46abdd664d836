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

from .inference import InputError, checkpoint_meta, load_model, merge_into_weights


def merge_checkpoint(config, checkpoint, out, timm_out=None, cfg_options=None):
    """Loads ``checkpoint`` and folds its method into the frozen weights
    (:meth:`~mmvpt.models.backbones.base.PromptedBackbone.merge_method`; LoRA, SSF, BitFit),
    then saves the whole model at ``out`` as an MMEngine checkpoint whose saved config has
    no method (``model.backbone.prompt=None``, no ``init_cfg``) and, given ``timm_out``, the
    backbone alone in timm's key names. Returns the method's display name."""
    import torch

    from mmvpt.models.prompts import display_name
    inputs = (osp.realpath(checkpoint), osp.realpath(config))
    for path in (out, timm_out):
        if path is not None and osp.realpath(path) in inputs:
            raise InputError(f'{path}: would overwrite an input; name another file')
    model, cfg = load_model(config, checkpoint, cfg_options)
    name = display_name(model.backbone.prompt)
    merge_into_weights(model, config)
    cfg.model.backbone.prompt = None
    cfg.model.backbone.init_cfg = None  # the merged weights are in the checkpoint
    meta = dict(cfg=cfg.pretty_text, merged=name)
    if checkpoint_meta(checkpoint).get('dataset_meta'):
        meta['dataset_meta'] = checkpoint_meta(checkpoint)['dataset_meta']
    for path, state in ((out, dict(state_dict=model.state_dict(), meta=meta)),
                        (timm_out, model.backbone.timm_model.state_dict())):
        if path is not None:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            torch.save(state, path)
    return name
