"""Random backbone weights saved in a real checkpoint format: the "pretrained" backbone that
tests put under tuned-only checkpoints (no download)."""
import os
import os.path as osp

import timm
import torch


def write_random_vit(path, arch='vit_base_patch16_224', img_size=224, seed=0, **arch_cfg):
    """Saves a randomly initialised timm model (``arch``, a ViT or a Swin, with ``arch_cfg``
    overrides, no head) as a timm ``.pth`` state dict, the format of timm's released weights;
    the folder is created if need be. Returns ``path``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size,
                                  **arch_cfg)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    torch.save(model.state_dict(), path)
    return str(path)
