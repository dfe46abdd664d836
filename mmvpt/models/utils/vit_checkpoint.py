"""Pretrained ViT weights in the formats users bring, loaded into a timm ViT with timm's own
converters, and clear errors when a checkpoint does not fit."""
import os.path as osp
import re

import numpy as np
import torch
from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn

# Keys of classification heads and pretraining-only parts that a backbone never uses.
_IGNORED = re.compile(
    r'^(head\.|fc_norm\.|pre_logits\.|decoder|mask_token$|dist_token$|head_dist\.)')


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model, with the keys named."""


# timm name <-> OpenMMLab name (mmseg's VisionTransformer; mmpretrain's differs only in
# keeping ``attn.qkv`` / ``attn.proj``), applied to the key with the ``blocks.``/``layers.``
# prefix already swapped. Order matters: ``norm`` last.
_OPENMMLAB_NAMES = (
    ('patch_embed.proj.', 'patch_embed.projection.'),
    ('mlp.fc1.', 'ffn.layers.0.0.'),
    ('mlp.fc2.', 'ffn.layers.1.'),
    ('attn.qkv.', 'attn.attn.in_proj_'),
    ('attn.proj.', 'attn.attn.out_proj.'),
    ('norm1.', 'ln1.'),
    ('norm2.', 'ln2.'),
)


def timm_vit_to_mmseg(state):
    """timm ViT keys -> mmseg ``VisionTransformer`` keys (as mmseg's vit2mmseg does)."""
    out = {}
    for key, value in state.items():
        if key.startswith('head'):
            continue
        if key.startswith('norm.'):
            key = 'ln1.' + key[len('norm.'):]
        elif key.startswith('blocks.'):
            key = 'layers.' + key[len('blocks.'):]
            for timm_name, mm_name in _OPENMMLAB_NAMES[1:]:
                key = key.replace('.' + timm_name, '.' + mm_name)
        else:
            key = key.replace(*_OPENMMLAB_NAMES[0])
        out[key] = value
    return out


def openmmlab_vit_to_timm(state):
    """mmseg or mmpretrain ``VisionTransformer`` keys -> timm keys."""
    out = {}
    for key, value in state.items():
        if key.startswith('ln1.'):
            key = 'norm.' + key[len('ln1.'):]
        elif key.startswith('layers.'):
            key = 'blocks.' + key[len('layers.'):]
            for timm_name, mm_name in _OPENMMLAB_NAMES[1:]:
                key = key.replace('.' + mm_name, '.' + timm_name)
        else:
            key = key.replace(_OPENMMLAB_NAMES[0][1], _OPENMMLAB_NAMES[0][0])
        out[key] = value
    return out


def check_pretrained_exists(path):
    """Fails with where such weights come from and how to point the config elsewhere."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'pretrained checkpoint {path!r} (model.backbone.init_cfg.checkpoint) does not exist; '
            'put the weights there (README, "Benchmarks" and "Segmentation": which file each '
            'config expects and where it comes from) or point the config elsewhere: '
            '--cfg-options model.backbone.init_cfg.checkpoint=PATH')


def read_state_dict(path):
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    from mmvpt.utils.checkpoint_loading import load_local_checkpoint
    return load_local_checkpoint(path, map_location='cpu')


def strip_wrappers(checkpoint, own_prefix):
    """The backbone's state dict out of the usual wrappings: ``{'state_dict': ...}``,
    ``{'model': ...}`` (MAE, DeiT, official Swin), DDP's ``module.``, MoCo-v3's
    ``base_encoder.``, OpenMMLab's ``backbone.`` and mmvpt's own ``own_prefix`` (``'vit.'``,
    ``'swin.'``: a full fine-tuning checkpoint)."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in checkpoint.items()}
    for prefix in ('base_encoder.', 'backbone.', own_prefix):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _unwrap(checkpoint):
    """The ViT's state dict in timm names (see :func:`strip_wrappers`; mmseg / mmpretrain
    key names are converted)."""
    state = strip_wrappers(checkpoint, 'vit.')
    if 'patch_embed.projection.weight' in state:  # mmseg / mmpretrain naming
        state = openmmlab_vit_to_timm(state)
    return {k: v for k, v in state.items() if not _IGNORED.match(k)}


def check_fit(path, state, model, describe, ignored=_IGNORED):
    """A :class:`CheckpointMismatchError` naming every missing, unexpected and mis-shaped
    key of ``state`` against ``model`` (``describe``: the model in words)."""
    expected = {k: v for k, v in model.state_dict().items() if not ignored.search(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}'
                  for k in sorted(set(state) & set(expected))
                  if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        def show(items):
            return ', '.join(items[:8]) + (f' (+{len(items) - 8} more)' if len(items) > 8 else '')
        lines = [f'checkpoint {path} does not fit {type(model).__name__} ({describe}):']
        if mismatched:
            lines.append(f'  shape mismatch: {show(mismatched)}')
        if missing:
            lines.append(f'  missing keys: {show(missing)}')
        if unexpected:
            lines.append(f'  unexpected keys: {show(unexpected)}')
        raise CheckpointMismatchError('\n'.join(lines))


def _check_npz_fit(path, model):
    with np.load(path) as w:
        keys = set(w.files)
        prefix = next((p for p in ('', 'opt/target/', 'params/')
                       if f'{p}embedding/kernel' in keys), None)
        if prefix is None:
            raise CheckpointMismatchError(f'{path} is not a Google ViT .npz (no embedding/kernel)')
        width = w[f'{prefix}embedding/kernel'].shape[-1]
        depth = len({m.group(1) for k in keys
                     for m in [re.match(rf'{prefix}Transformer/encoderblock_(\d+)/', k)] if m})
    if width != model.embed_dim or (depth and depth != len(model.blocks)):
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit: it holds a ViT of width {width} and depth {depth}, '
            f'the model has width {model.embed_dim} and depth {len(model.blocks)}')


def load_vit_pretrained(model, path, interpolate_mode='bicubic'):
    """Loads ``path`` into the timm ``VisionTransformer`` ``model``, resizing the position
    embedding to the model's grid. Formats: Google ``.npz`` (timm's ``_load_weights``),
    timm ``.pth`` / ``.bin`` / ``.safetensors``, MAE (``{'model': ...}``, decoder dropped),
    MoCo-v3 (``module.base_encoder.``), DeiT / OpenMMLab wrappings."""
    check_pretrained_exists(path)
    if path.endswith('.npz'):
        _check_npz_fit(path, model)
        with torch.no_grad():
            _load_weights(model, path)
        return
    state = _unwrap(read_state_dict(path))
    state = checkpoint_filter_fn(state, model, interpolation=interpolate_mode)
    state = {k: v for k, v in state.items() if not _IGNORED.match(k)}
    check_fit(path, state, model, f'embed_dim={model.embed_dim}, depth={len(model.blocks)}')
    model.load_state_dict(state, strict=False)
