"""Tiny models for the tests, defined once: the ViT and Swin every test shrinks to (keyword
overrides for the tests that use another depth or width) and their builders, the demo
config's tiny ViT, models of config files and their scores, the tiny SETR configs, and a
prompt config per method and path for the tests that run every method on both backbones
(mixed precision, torch.compile)."""
import os.path as osp

import torch

from mmvpt.models import PromptedSwin, PromptedViT
from mmvpt.models.methods import tiny_settings

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(ROOT, 'configs/demo/vit-tiny_synthetic.py')

VIT = 'vit_base_patch16_224'
SWIN = 'swin_tiny_patch4_window7_224'


def vit_arch(**overrides):
    """``arch_cfg`` of the tiny ViT: 8-pixel patches, width 32, 3 blocks, 4 heads."""
    return {**dict(patch_size=8, embed_dim=32, depth=3, num_heads=4), **overrides}


def swin_arch(**overrides):
    """``arch_cfg`` of the tiny Swin: width 16, two stages of 2 blocks, 4-token windows."""
    return {**dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4), **overrides}


def vit_spec(img_size=32, **arch):
    """PromptedViT's arguments for the tiny ViT; ``arch`` overrides entries of its arch_cfg."""
    return dict(arch=VIT, img_size=img_size, arch_cfg=vit_arch(**arch))


def swin_spec(img_size=32, **arch):
    """PromptedSwin's arguments for the tiny Swin; ``arch`` overrides entries of its arch_cfg."""
    return dict(arch=SWIN, img_size=img_size, arch_cfg=swin_arch(**arch))


TINY_VIT = vit_spec()
TINY_SWIN = swin_spec()
# The tiny ViT of configs/demo/vit-tiny_synthetic.py (random weights: conftest's demo_backbone).
DEMO_ARCH = vit_arch(embed_dim=64, depth=4)
# The tiny ViT the SETR configs shrink to (shrink_seg_config).
SEG_ARCH = vit_arch(depth=4, num_heads=2)

BACKBONES = {'vit': (PromptedViT, TINY_VIT), 'swin': (PromptedSwin, TINY_SWIN)}


def build(prompt=None, backbone='vit', **kwargs):
    """The tiny ``backbone`` ('vit' or 'swin') with ``prompt``, timm's random init (the global
    RNG); ``kwargs`` add to or override its spec (``drop_path_rate``, ``out_type``, ...)."""
    cls, spec = BACKBONES[backbone]
    return cls(prompt=prompt, **{**spec, **kwargs})


def peaked(prompt=None, backbone='vit', **kwargs):
    """``build`` after ``torch.manual_seed(0)``, in eval mode, its backbone weights then moved
    by random noise (0.2 N(0, 1) on matrices, 0.02 N(0, 1) on the rest) large enough for
    peaked attention: timm's init gives nearly uniform attention at this width, which would
    hide where a branch joins the block."""
    torch.manual_seed(0)
    model = build(prompt, backbone, **kwargs).eval()
    with torch.no_grad():
        for p in model.timm_model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 2 else 0.02))
    return model


# -- models of config files ------------------------------------------------------------------
def model_from_config(config):
    """The model of a classification ``config`` file, built as MMEngine's runner and
    mmpretrain's get_model do."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(config)
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    return MODELS.build(cfg.model)


def scores_of(model, config, paths):
    """Per-image class scores of ``model`` through the config's test pipeline."""
    from mmengine.config import Config
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope('mmpretrain')
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    batch = pseudo_collate([pipeline(dict(img_path=p)) for p in paths])
    model.eval()
    with torch.no_grad():
        return [s.pred_score for s in model.test_step(batch)]


def write_cvpt_config(path, backbone_line, num_tokens=4):
    """The demo config with CVPT (trainable cross-attention copies) on a frozen backbone
    (``backbone_line``: its init_cfg), tuned-only checkpoints after each of 2 epochs."""
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        f"model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.CVPT', "
        f"num_tokens={num_tokens}, ca_trainable=True)))\n" + backbone_line +
        "custom_hooks = [dict(type='mmvpt.TunedCheckpointHook')]\n"
        "train_cfg = dict(max_epochs=2, val_interval=100)\n"
        "default_hooks = dict(checkpoint=dict(interval=1))\n")
    return str(path)


# -- tiny SETR (configs/<method>/setr_vit-l_ade20k.py) -------------------------------------------
def seg_config(method):
    return osp.join(ROOT, f'configs/{method}/setr_vit-l_ade20k.py')


def shrink_seg_config(cfg, data_root, pretrained):
    """The config at a tiny width and 64-pixel crops, with its structure kept, on the
    ``pretrained`` tiny ViT checkpoint (SEG_ARCH)."""
    backbone = cfg.model.backbone
    backbone.update(arch_cfg=SEG_ARCH, img_size=64, out_indices=(0, 1, 2, 3),
                    init_cfg=dict(type='Pretrained', checkpoint=pretrained))
    if backbone.get('prompt') and backbone.prompt.get('num_tokens', 0) > 20:
        backbone.prompt.num_tokens = 20
    for head in [cfg.model.decode_head, *cfg.model.auxiliary_head]:
        head.update(in_channels=32, channels=16)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.test_cfg = dict(mode='slide', crop_size=(64, 64), stride=(43, 43))
    for step in cfg.train_dataloader.dataset.pipeline:
        if step.type == 'RandomResize':
            step.scale = (128, 64)
        if step.type == 'RandomCrop':
            step.crop_size = (64, 64)
    # test_pipeline: what mmseg's inference_model runs
    for pipeline in (cfg.val_dataloader.dataset.pipeline, cfg.test_dataloader.dataset.pipeline,
                     cfg.test_pipeline):
        for step in pipeline:
            if step.type == 'Resize':
                step.scale = (128, 64)
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.data_root = data_root
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg.update(max_iters=4, val_interval=4)
    cfg.default_hooks.checkpoint.interval = 4
    cfg.default_hooks.logger.interval = 1
    return cfg


def write_tiny_seg_config(method, data_root, path, pretrained):
    """``method``'s SETR config, shrunk, written to ``path``."""
    from mmvpt.apis import prepare_config
    cfg = shrink_seg_config(prepare_config(seg_config(method)), data_root, pretrained)
    cfg.dump(str(path))
    return str(path)


# -- every method on both backbones ---------------------------------------------------------------
# Each method's tiny settings, as it declares them (``tiny_settings``), and linear probing.
METHODS = {**tiny_settings(), 'linear': None}


def prompt_config(backbone, method, methods=METHODS):
    """``methods[method]`` as it runs on ``backbone`` (what the method needs there: Swin's
    iVPT without AR, BitFit with the relative-position tables, as the Swin-B configs)."""
    prompt = methods[method]
    if prompt is None:
        return None
    from mmvpt.registry import MODELS
    return {**prompt, **MODELS.get(prompt['type']).backbone_options(backbone)}
