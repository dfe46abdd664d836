"""Pretrained Swin weights loaded into a timm SwinTransformer with timm's own converter."""
import re

from timm.models.swin_transformer import checkpoint_filter_fn

from .vit_checkpoint import (
    CheckpointMismatchError,
    check_fit,
    check_pretrained_exists,
    read_state_dict,
    strip_wrappers,
)

# Classification heads and buffers that timm rebuilds (the position index, shift masks).
_IGNORED = re.compile(r'^head\.|relative_position_index$|attn_mask$')


def load_swin_pretrained(model, path):
    """Loads ``path`` into the timm ``SwinTransformer`` ``model``: timm ``.pth`` / ``.bin`` /
    ``.safetensors`` and the official Microsoft checkpoints (``{'model': ...}``, patch
    merging at the end of a stage, e.g. ``swin_base_patch4_window7_224_22k.pth``), with
    relative-position tables resized for another window size."""
    check_pretrained_exists(path)
    state = strip_wrappers(read_state_dict(path), 'swin.')
    if any(k.startswith('stages.') for k in state):
        raise CheckpointMismatchError(
            f'{path} uses OpenMMLab Swin key names (stages.N...); load the timm or the '
            'official (Microsoft) checkpoint instead')
    state = {k: v for k, v in state.items() if not _IGNORED.search(k)}
    try:
        state = checkpoint_filter_fn(state, model)
    except AttributeError as err:  # a key naming a module the model does not have
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit {type(model).__name__}: {err}') from None
    state = {k: v for k, v in state.items() if not _IGNORED.search(k)}
    check_fit(path, state, model, f'embed_dim={model.embed_dim}, depths='
              f'{tuple(len(s.blocks) for s in model.layers)}', ignored=_IGNORED)
    model.load_state_dict(state, strict=False)
