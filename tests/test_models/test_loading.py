"""Tuned-only checkpoints through OpenMMLab's own loading routes: every route puts the
pretrained backbone under them and predicts what tools/test.py predicts, or fails naming
what is missing; torch's weights-only loading reads them once mmvpt is imported."""
import glob
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.runner import load_checkpoint
from PIL import Image

from mmvpt.models.utils import CheckpointMismatchError

from tests.conftest import ROOT, data_options, pretrained_line, run_tool
from tests.helpers.tiny_models import (
    SEG_ARCH,
    model_from_config,
    scores_of,
    write_cvpt_config,
    write_tiny_seg_config,
)

pytestmark = pytest.mark.tools


@pytest.fixture(scope='module')
def tuned(tiny_vtab, demo_backbone, tmp_path_factory):
    """A CVPT run (trainable cross-attention copies: tensors of its own beyond the prompts)
    on the frozen 'pretrained' backbone, and tools/test.py's per-image scores for it."""
    tmp = tmp_path_factory.mktemp('tuned')
    config = write_cvpt_config(tmp / 'cvpt.py', pretrained_line(demo_backbone))
    run_tool('train.py', config, '--work-dir', str(tmp / 'work'), '--cfg-options',
             *data_options(tiny_vtab))
    checkpoint = str(tmp / 'work' / 'epoch_2.pth')
    run_tool('test.py', config, checkpoint, '--work-dir', str(tmp / 'test'), '--out',
             str(tmp / 'preds.pkl'), '--cfg-options', *data_options(tiny_vtab))
    with open(tmp / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    scores = {p['img_path']: p['pred_score'] for p in preds}
    return config, checkpoint, scores


def assert_scores_equal(got, expected):
    assert len(got) == len(expected) == 32
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.as_tensor(g).float(), e.float(), rtol=0, atol=1e-5)


def test_the_backbone_matters(tuned):
    # The equalities below would also hold for a model that ignores its backbone; this one
    # does not: on a random backbone (the silent failure) its scores differ.
    config, checkpoint, expected = tuned
    model = model_from_config(config)
    model.backbone.backbone_ready = True  # pretend: keeps the random init under the checkpoint
    model.load_state_dict(torch.load(checkpoint)['state_dict'], strict=False)
    got = scores_of(model, config, list(expected))
    assert max((g - e).abs().max() for g, e in zip(got, expected.values())) > 1e-2


def test_mmengine_load_checkpoint(tuned):
    config, checkpoint, expected = tuned
    model = model_from_config(config)
    load_checkpoint(model, checkpoint, map_location='cpu')
    assert_scores_equal(scores_of(model, config, list(expected)), list(expected.values()))


def test_torch_load_state_dict_strict(tuned):
    config, checkpoint, expected = tuned
    model = model_from_config(config)
    state = torch.load(checkpoint)['state_dict']  # weights-only: mmvpt is imported
    assert not any(k.startswith('backbone.vit.') for k in state)
    model.load_state_dict(state, strict=True)
    assert_scores_equal(scores_of(model, config, list(expected)), list(expected.values()))


def test_mmpretrain_get_model(tuned):
    # (mmpretrain's inference_model takes model-zoo names only; the inferencer below takes
    # configs and the model get_model returns.)
    from mmpretrain.apis import ImageClassificationInferencer, get_model
    config, checkpoint, expected = tuned
    model = get_model(config, pretrained=checkpoint, device='cpu')
    got = [r['pred_scores'] for r in ImageClassificationInferencer(model)(list(expected))]
    assert_scores_equal(got, list(expected.values()))


def test_mmpretrain_image_classification_inferencer(tuned):
    from mmpretrain.apis import ImageClassificationInferencer
    config, checkpoint, expected = tuned
    inferencer = ImageClassificationInferencer(config, pretrained=checkpoint, device='cpu')
    got = [r['pred_scores'] for r in inferencer(list(expected), batch_size=8)]
    assert_scores_equal(got, list(expected.values()))


def test_load_from_in_a_new_run(tuned, tiny_vtab, tmp_path):
    from mmengine.runner import Runner

    from mmvpt.apis import prepare_config
    config, checkpoint, expected = tuned
    options = dict(zip([o.split('=')[0] for o in data_options(tiny_vtab)], [tiny_vtab] * 3))
    options.update({'load_from': checkpoint, 'train_cfg.max_epochs': 1,
                    'optim_wrapper.optimizer.lr': 0., 'optim_wrapper.optimizer.weight_decay': 0.})
    cfg = prepare_config(config, options, str(tmp_path))
    cfg.experiment_name = 'load_from_route'
    runner = Runner.from_cfg(cfg)
    runner.train()  # an epoch at lr 0: the weights stay what load_from put in place
    assert_scores_equal(scores_of(runner.model, config, list(expected)), list(expected.values()))


def test_missing_backbone_is_named_not_silently_random(tuned, tmp_path):
    from mmpretrain.apis import get_model
    config, checkpoint, expected = tuned
    missing = tmp_path / 'nowhere' / 'vit.pth'
    no_file = write_cvpt_config(tmp_path / 'no_file.py', pretrained_line(str(missing)))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        get_model(no_file, pretrained=checkpoint, device='cpu')
    # Without init_cfg, the backbone the checkpoint records having been tuned on...
    no_init = write_cvpt_config(tmp_path / 'no_init.py', '')
    model = get_model(no_init, pretrained=checkpoint, device='cpu')
    assert_scores_equal(scores_of(model, config, list(expected)), list(expected.values()))
    # ... and without that record either, an error that says what to set.
    state = torch.load(checkpoint)
    del state['state_dict']._metadata
    unrecorded = str(tmp_path / 'unrecorded.pth')
    torch.save(state, unrecorded)
    with pytest.raises(RuntimeError, match=r"holds only tuned tensors.*model\.backbone\.init_cfg"):
        get_model(no_init, pretrained=unrecorded, device='cpu')


def test_a_checkpoint_that_does_not_fit_is_named_by_stock_loaders(tuned, demo_backbone, tmp_path):
    from mmpretrain.apis import get_model
    _, checkpoint, _ = tuned
    other = write_cvpt_config(tmp_path / 'p6.py', pretrained_line(demo_backbone), num_tokens=6)
    with pytest.raises(CheckpointMismatchError, match=r'prompt\.prompts: checkpoint \(4, 4, 64\) '
                                                      r'vs model \(4, 6, 64\)'):
        get_model(other, pretrained=checkpoint, device='cpu')


def test_weights_only_loading_needs_mmvpt_imported(tuned):
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) < (2, 6):
        pytest.skip('torch < 2.6 loads everything')
    _, checkpoint, _ = tuned
    code = ('import sys, torch\n'
            'try:\n    torch.load(sys.argv[1])\nexcept Exception as e:\n'
            '    print("refused", type(e).__name__)\n'
            'import mmvpt\n'
            'print(sorted(torch.load(sys.argv[1])))\n')
    out = subprocess.run([sys.executable, '-c', code, checkpoint], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert 'refused UnpicklingError' in out
    assert ("['message_hub', 'meta', 'optimizer', 'param_schedulers', 'rng_state', "
            "'state_dict']" in out)


# -- segmentation ------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tuned_setr(tmp_path_factory):
    from mmvpt.testing import make_ade20k, write_random_vit

    tmp = tmp_path_factory.mktemp('setr')
    ade = make_ade20k(str(tmp / 'data'), num_train=4, num_val=2)
    backbone = write_random_vit(tmp / 'vit.pth', img_size=64, **SEG_ARCH)
    config = write_tiny_seg_config('cvpt', ade, tmp / 'cvpt_tiny.py', backbone)
    run_tool('train.py', config, '--work-dir', str(tmp / 'work'))
    checkpoint = str(tmp / 'work' / 'iter_4.pth')
    run_tool('test.py', config, checkpoint, '--work-dir', str(tmp / 'test'), '--out',
             str(tmp / 'preds'))
    images = sorted(glob.glob(osp.join(ade, 'images/validation/*.jpg')))
    # tools/test.py's label PNGs hold class + 1 (reduce_zero_label)
    expected = [np.array(Image.open(osp.join(str(tmp / 'preds'), osp.basename(p)[:-4] + '.png')))
                .astype(np.int64) - 1 for p in images]
    return config, checkpoint, images, expected


def test_setr_checkpoint_keeps_the_heads_batchnorm_statistics(tuned_setr):
    _, checkpoint, _, _ = tuned_setr
    state = torch.load(checkpoint)['state_dict']
    running = [k for k in state if k.startswith('decode_head.') and k.endswith('running_mean')]
    assert running and all(state[k].abs().sum() > 0 for k in running)  # trained, not the init 0


def test_mmseg_inferencer_and_init_model(tuned_setr):
    # init_model drops the backbone's init_cfg: the checkpoint's record of its pretrained
    # backbone is what puts it in place there.
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    config, checkpoint, images, expected = tuned_setr
    assert torch.load(checkpoint)['state_dict']._metadata['backbone']['pretrained'].endswith(
        'vit.pth')
    inferencer = MMSegInferencer(model=config, weights=checkpoint, device='cpu')
    results = inferencer(images, return_datasamples=True)
    model = init_model(config, checkpoint, device='cpu')
    for path, sample, want in zip(images, results, expected):
        assert np.array_equal(sample.pred_sem_seg.data[0].numpy(), want)
        got = inference_model(model, path).pred_sem_seg.data[0].numpy()
        assert np.array_equal(got, want)
