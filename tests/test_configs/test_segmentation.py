"""SETR on a generated mini ADE20K: every method's config (shrunk to a tiny width) trains a
few iterations (its heads change) and evaluates single-scale and with --tta, each reported
mIoU equal to the one computed by hand from the saved predictions; a 2-process gloo run
completes."""
import glob
import os.path as osp
import re
import socket
import uuid

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from PIL import Image

from mmvpt.apis import prepare_config
from mmvpt.testing import make_ade20k
from mmvpt.utils import apply_tta

from tests.conftest import run_tool
from tests.helpers.tiny_models import SEG_ARCH, seg_config, shrink_seg_config, write_tiny_seg_config

METHODS = ('linear', 'vpt', 'cvpt', 'ivpt', 'e2vpt', 'lora', 'adaptformer')


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade20k(str(tmp_path_factory.mktemp('ade')), num_train=4, num_val=2)


@pytest.fixture(scope='module')
def vit(tmp_path_factory):
    from mmvpt.testing import write_random_vit
    return write_random_vit(tmp_path_factory.mktemp('vit') / 'vit.pth', img_size=64, **SEG_ARCH)


@pytest.mark.tools  # slow: a training run per method in process
@pytest.mark.parametrize('method', METHODS)
def test_each_method_trains_and_evaluates_single_and_multi_scale(method, ade, vit, tmp_path):
    cfg = shrink_seg_config(prepare_config(seg_config(method), work_dir=str(tmp_path)), ade,
                            vit)
    cfg.experiment_name = uuid.uuid4().hex
    cfg.test_evaluator.update(output_dir=str(tmp_path / 'ss'), keep_results=True)
    runner = Runner.from_cfg(cfg)
    assert not any(p.requires_grad for p in runner.model.backbone.vit.parameters())
    norms = {type(m).__name__ for m in runner.model.modules()}
    assert 'BatchNorm2d' in norms and 'SyncBatchNorm' not in norms  # SyncBN fell back to BN
    heads = {n: p.detach().clone() for n, p in runner.model.named_parameters() if 'head' in n}
    runner.train()
    changed = {n.split('.')[0] for n, p in runner.model.named_parameters()
               if n in heads and not torch.equal(p, heads[n])}
    assert changed == {'decode_head', 'auxiliary_head'}
    # Single scale, in memory: the reported mIoU is the one its saved predictions give.
    assert runner.test()['mIoU'] == miou_by_hand(str(tmp_path / 'ss'), ade)
    # --tta: multi-scale (6 ratios) x flip on the config's own tta pipeline, from the
    # tuned-only checkpoint on the pretrained backbone
    tta_cfg = shrink_seg_config(prepare_config(seg_config(method), work_dir=str(tmp_path / 'tta')),
                                ade, vit)
    apply_tta(tta_cfg)
    tta_cfg.load_from = osp.join(str(tmp_path), 'iter_4.pth')
    tta_cfg.experiment_name = uuid.uuid4().hex
    tta_cfg.test_evaluator.update(output_dir=str(tmp_path / 'ms'), keep_results=True)
    assert type(tta_cfg.model.type) is str and tta_cfg.model.type.endswith('SegTTAModel')
    transforms = tta_cfg.test_dataloader.dataset.pipeline[1].transforms
    assert [t.scale_factor for t in transforms[0]] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert Runner.from_cfg(tta_cfg).test()['mIoU'] == miou_by_hand(str(tmp_path / 'ms'), ade)


def miou_by_hand(pred_dir, ade):
    """mIoU over the validation set from the saved prediction PNGs (class + 1, as mmseg
    saves them with reduce_zero_label) and the annotations (0 ignored)."""
    intersection, union = np.zeros(150), np.zeros(150)
    annotations = sorted(glob.glob(osp.join(ade, 'annotations/validation/*.png')))
    assert annotations
    for path in annotations:
        gt = np.array(Image.open(path)).astype(np.int64) - 1  # 0 ("other") -> -1, ignored
        pred = np.array(Image.open(osp.join(pred_dir, osp.basename(path)))).astype(np.int64) - 1
        valid = gt >= 0
        for c in range(150):
            p, g = (pred == c) & valid, (gt == c) & valid
            intersection[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    return round(float(np.mean(intersection[present] / union[present]) * 100), 2)


@pytest.fixture(scope='module')
def trained_cvpt(ade, vit, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('setr')
    config = write_tiny_seg_config('cvpt', ade, tmp / 'cvpt_tiny.py', vit)
    cfg = Config.fromfile(config)
    cfg.train_cfg.update(max_iters=12, val_interval=12)
    cfg.default_hooks.checkpoint.interval = 12
    cfg.dump(config)
    run_tool('train.py', config, '--work-dir', str(tmp / 'work'))
    return config, str(tmp / 'work' / 'iter_12.pth')


@pytest.mark.tools
@pytest.mark.parametrize('tta', [False, True])
def test_reported_miou_equals_hand_computation(trained_cvpt, ade, tmp_path, tta):
    config, checkpoint = trained_cvpt
    args = ['test.py', config, checkpoint, '--work-dir', str(tmp_path), '--out',
            str(tmp_path / 'preds')]
    proc = run_tool(*(args + ['--tta'] if tta else args))
    reported = float(re.findall(r'mIoU: ([\d.]+)', proc.stdout)[-1])
    assert reported == miou_by_hand(str(tmp_path / 'preds'), ade)
    assert reported > 0


def test_no_prompt_parameter_gets_the_head_lr_multiplier(ade, vit):
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    for method in ('cvpt', 'e2vpt', 'ivpt', 'vpt', 'lora', 'adaptformer'):
        cfg = shrink_seg_config(prepare_config(seg_config(method)), ade, vit)
        model = MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        lr_of = {id(p): group['lr'] for group in wrapper.optimizer.param_groups
                 for p in group['params']}
        prompt = [p for n, p in model.named_parameters() if n.startswith('backbone.prompt.')]
        heads = [p for n, p in model.named_parameters() if 'head' in n.split('.')[0]]
        assert prompt and heads
        assert {lr_of[id(p)] for p in prompt} == {1e-3}, method
        assert all(abs(lr_of[id(p)] - 1e-2) < 1e-12 for p in heads), method


def test_cvpt_segmentation_shares_the_self_attention_weights(ade, vit):
    from mmseg.registry import MODELS
    cfg = shrink_seg_config(prepare_config(seg_config('cvpt')), ade, vit)
    model = MODELS.build(cfg.model)
    prompt = model.backbone.prompt
    assert prompt.cross_attn is None and prompt.ca_init == 'shared'
    assert not any('cross_attn' in n for n, _ in model.named_parameters())


@pytest.mark.tools
def test_two_process_gloo_training(ade, vit, tmp_path, monkeypatch):
    config = write_tiny_seg_config('vpt', ade, tmp_path / 'vpt_tiny.py', vit)
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        monkeypatch.setenv('PORT', str(sock.getsockname()[1]))
    run_tool('dist_train.sh', config, '2', '--work-dir', str(tmp_path / 'work'), '--no-validate')
    state = torch.load(osp.join(str(tmp_path / 'work'), 'iter_4.pth'), weights_only=False)
    assert 'backbone.prompt.prompts' in state['state_dict']
    assert not any(k.startswith('backbone.vit.') for k in state['state_dict'])  # tuned only
