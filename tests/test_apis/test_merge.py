"""A trained LoRA / DoRA / SSF / BitFit folded into the frozen weights: the merged checkpoint scores
what the tuned-only one does, through the stock loaders, and its backbone loads into timm."""
import os.path as osp

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint

import mmvpt.models.adapters.dora  # noqa: F401  until the package finds its methods itself
from mmvpt.apis import merge_checkpoint
from mmvpt.utils.tuned_checkpoint import save_tuned_checkpoint

from tests.conftest import DEMO_CONFIG, data_options, pretrained_line, run_tool
from tests.helpers.tiny_models import DEMO_ARCH

PROMPTS = dict(lora="dict(type='mmvpt.LoRA', rank=2, targets=('q', 'v', 'proj', 'fc1'))",
               dora="dict(type='mmvpt.DoRA', rank=2, targets=('q', 'v', 'proj', 'fc1'))",
               ssf="dict(type='mmvpt.SSF')", bitfit="dict(type='mmvpt.BitFit')",
               adaptformer="dict(type='mmvpt.AdaptFormer', bottleneck=4)", none='None')


def tuned_task(tmp_path, pretrained, method):
    """A config on the demo's tiny ViT with ``method``, and a tuned-only checkpoint of it
    whose method tensors are moved off their init."""
    config = tmp_path / f'{method}.py'
    config.write_text(f'_base_ = [{DEMO_CONFIG!r}]\nmodel = dict(backbone=dict(frozen=True, '
                      f'prompt={PROMPTS[method]}))\n' + pretrained_line(pretrained))
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.backbone.prompt.parameters() if model.backbone.prompt is not None else ():
            p.add_(torch.randn_like(p) * 0.1)
    checkpoint = save_tuned_checkpoint(tmp_path / f'{method}.pth', model, meta=dict(
        dataset_meta=dict(classes=[f'c{i}' for i in range(cfg.model.head.num_classes)])))
    return str(config), checkpoint


def scores(config, checkpoint, images, cfg_options=None):
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu')
    with torch.no_grad():
        return model.eval().head(model.extract_feat(images)), model


@pytest.mark.parametrize('method', ['lora', 'dora', 'ssf', 'bitfit'])
def test_merged_checkpoint_scores_as_the_tuned_one(tmp_path, demo_backbone, method):
    config, checkpoint = tuned_task(tmp_path, demo_backbone, method)
    out, timm_out = tmp_path / 'merged' / 'model.pth', tmp_path / 'merged' / 'timm.pth'
    assert merge_checkpoint(config, checkpoint, str(out), str(timm_out)) == {
        'lora': 'LoRA', 'dora': 'DoRA', 'ssf': 'SSF', 'bitfit': 'BitFit'}[method]
    images = torch.randn(3, 3, 32, 32)
    tuned, _ = scores(config, checkpoint, images)
    # the merged checkpoint loads into the config without a method and scores the same
    merged, model = scores(config, str(out), images, {'model.backbone.prompt': None})
    assert model.backbone.prompt is None
    torch.testing.assert_close(merged, tuned, rtol=0, atol=1e-5)
    saved = torch.load(out, map_location='cpu', weights_only=False)
    assert not any('prompt' in k for k in saved['state_dict'])
    assert saved['meta']['dataset_meta']['classes'] == ['c0', 'c1', 'c2', 'c3']
    assert Config.fromstring(saved['meta']['cfg'], '.py').model.backbone.prompt is None
    # the backbone alone, in timm's keys, loads into timm's model
    vit = timm.create_model('vit_base_patch16_224', pretrained=False, num_classes=0, img_size=32,
                            **DEMO_ARCH)
    vit.load_state_dict(torch.load(timm_out, map_location='cpu'))
    with torch.no_grad():
        torch.testing.assert_close(model.head((vit.eval().forward_features(images)[:, 0], )), tuned,
                                   rtol=0, atol=1e-5)


@pytest.mark.tools
def test_merge_tool(tmp_path, demo_backbone):
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'lora')
    proc = run_tool('misc/merge_method.py', config, checkpoint, str(tmp_path / 'merged.pth'))
    assert ('LoRA merged into the frozen weights' in proc.stdout
            and osp.isfile(tmp_path / 'merged.pth'))
    assert f'config: {config}; {checkpoint} saves none' in proc.stdout
    # a method with a non-linear bottleneck: one line, nothing written
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'adaptformer')
    proc = run_tool('misc/merge_method.py', config, checkpoint, str(tmp_path / 'af.pth'),
                    check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'AdaptFormer cannot be merged into the frozen weights' in \
        proc.stderr.strip().splitlines()[-1]
    assert not osp.exists(tmp_path / 'af.pth')
    # an output that would overwrite the input is refused
    proc = run_tool('misc/merge_method.py', config, checkpoint, checkpoint, check=False)
    assert proc.returncode == 1 and 'would overwrite an input' in proc.stderr


@pytest.mark.tools
def test_merge_and_test_tools_say_what_they_did(tmp_path, trained_lora, tiny_vtab):
    """As a user runs them: merge_method.py names the saved config it used and the option it
    set that the config file lacks; tools/test.py, given the merged checkpoint and the
    method's config, says it leaves the method out and tests."""
    config, checkpoint = trained_lora
    out = str(tmp_path / 'merged.pth')
    proc = run_tool('misc/merge_method.py', config, checkpoint, out)
    assert (f'config: the one saved in {checkpoint} (as trained, its --cfg-options included), '
            f'not {config}: it sets model.backbone.prompt.rank=4\n') in proc.stdout
    proc = run_tool('test.py', config, out, '--work-dir', str(tmp_path / 'test'),
                    '--cfg-options', *data_options(tiny_vtab))
    assert (f'{out} holds LoRA merged into the frozen weights: loading it with '
            'model.backbone.prompt=None') in proc.stdout
    assert 'accuracy/top1' in proc.stdout


def test_test_tool_merges_before_testing(tmp_path, demo_backbone, tiny_vtab):
    """tools/test.py --merge, in this process: the same scores as the tuned model, from the
    plain backbone; a method that cannot merge stops the test, saying why."""
    import pickle

    from tools.test import main as test_main
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'lora')
    scores_of = {}
    for run, extra in (('tuned', []), ('merged', ['--merge'])):
        out = tmp_path / f'{run}.pkl'
        # a name of each run's own: MMEngine names its logger by config and second, and two
        # runs of one process within a second would share it (and its log file)
        test_main([config, checkpoint, '--work-dir', str(tmp_path / run), '--out', str(out),
                   '--cfg-options', *data_options(tiny_vtab), f'experiment_name=lora_{run}']
                  + extra)
        with open(out, 'rb') as f:
            scores_of[run] = torch.stack([sample['pred_score'] for sample in pickle.load(f)])
    torch.testing.assert_close(scores_of['merged'], scores_of['tuned'], rtol=0, atol=1e-5)
    logs = [p.read_text() for p in (tmp_path / 'merged').rglob('*.log')]
    assert any('LoRA merged into the frozen weights' in log for log in logs)
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'adaptformer')
    with pytest.raises(ValueError, match='AdaptFormer cannot be merged'):  # one line by run_cli
        test_main([config, checkpoint, '--merge', '--work-dir', str(tmp_path / 'af'),
                   '--cfg-options', *data_options(tiny_vtab)])


def test_inference_merges_when_asked(tmp_path, demo_backbone, monkeypatch):
    """infer_images(merge=True) (tools/infer.py --merge): the tuned model's top-k from the
    plain backbone; a method that cannot merge is one InputError."""
    import numpy as np
    from PIL import Image

    from mmvpt.apis.inference import InputError, infer_images
    from mmvpt.models.backbones.base import PromptedBackbone
    from mmvpt.testing import synthetic_image
    merged_methods = []
    merge_method = PromptedBackbone.merge_method

    def recording_merge(backbone):
        merged_methods.append(type(backbone.prompt).__name__)
        return merge_method(backbone)
    monkeypatch.setattr(PromptedBackbone, 'merge_method', recording_merge)
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'ssf')
    image = str(tmp_path / 'x.png')
    Image.fromarray(synthetic_image(1, 4, 32, np.random.default_rng(0))).save(image)
    tuned, merged = (infer_images(config, checkpoint, [image], str(tmp_path / run), topk=4,
                                  device='cpu', merge=run == 'merged')[0]['topk']
                     for run in ('tuned', 'merged'))
    assert [t['index'] for t in merged] == [t['index'] for t in tuned]
    np.testing.assert_allclose([t['score'] for t in merged], [t['score'] for t in tuned], rtol=0,
                               atol=1e-5)
    assert merged_methods == ['SSF']  # once, for the merged run
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'adaptformer')
    with pytest.raises(InputError, match='--merge: AdaptFormer cannot be merged'):
        infer_images(config, checkpoint, [image], str(tmp_path / 'af'), device='cpu', merge=True)


# What the trained LoRA run of ``trained_lora`` passed beyond the data: a rank and an lr that its
# config file does not set (the lr moves LoRA's B well off zero in one epoch).
TRAINING_OPTIONS = ['model.backbone.prompt.rank=4', 'optim_wrapper.optimizer.lr=0.05',
                    'train_cfg.max_epochs=1', 'randomness.deterministic=True']


@pytest.fixture(scope='module')
def trained_lora(tmp_path_factory, demo_backbone, tiny_vtab):
    """(config, tuned-only checkpoint) of a LoRA run of tools/train.py (in this process) with
    ``TRAINING_OPTIONS``: the checkpoint saves the config with them applied."""
    from tools.train import main as train_main
    tmp_path = tmp_path_factory.mktemp('lora_run')
    config = tmp_path / 'lora.py'
    config.write_text(f'_base_ = [{DEMO_CONFIG!r}]\nmodel = dict(backbone=dict(frozen=True, '
                      f'prompt={PROMPTS["lora"]}))\n' + pretrained_line(demo_backbone)
                      + "custom_hooks = [dict(type='mmvpt.TunedCheckpointHook')]\n")
    train_main([str(config), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                *data_options(tiny_vtab), *TRAINING_OPTIONS, 'experiment_name=lora_train'])
    return str(config), str(tmp_path / 'work' / 'epoch_1.pth')


def test_merge_reads_the_training_options_from_the_checkpoint(tmp_path, trained_lora, tiny_vtab,
                                                              demo_backbone):
    """A checkpoint trained with --cfg-options (LoRA rank 4, the config's 2) merges without
    them: its saved config builds the model. The merged checkpoint then tests with the
    method's config as it is (tools/test.py sets model.backbone.prompt=None), scoring what
    the tuned checkpoint scores."""
    import pickle

    from tools.test import main as test_main
    config, checkpoint = trained_lora
    out = str(tmp_path / 'merged.pth')
    assert merge_checkpoint(config, checkpoint, out) == 'LoRA'
    images = torch.randn(3, 3, 32, 32)
    tuned, _ = scores(config, checkpoint, images, {'model.backbone.prompt.rank': 4})
    merged, _ = scores(config, out, images, {'model.backbone.prompt': None})
    torch.testing.assert_close(merged, tuned, rtol=0, atol=1e-5)
    saved = torch.load(out, map_location='cpu', weights_only=False)
    assert saved['meta']['mmvpt'] == dict(tuned_only=False, prompts={},
                                          merged={'backbone.prompt': 'LoRA'})
    # LoRA moved the frozen weights (the equality above is not that of two plain models)
    frozen = torch.load(demo_backbone, map_location='cpu')['blocks.0.attn.qkv.weight']
    moved = saved['state_dict']['backbone.vit.blocks.0.attn.qkv.weight'] - frozen
    assert moved.abs().max() > 1e-3
    # without the saved config, the config file's rank 2 does not fit: the error says what to pass
    bare = tmp_path / 'bare.pth'
    torch.save(dict(state_dict=torch.load(checkpoint, map_location='cpu',
                                          weights_only=False)['state_dict']), bare)
    with pytest.raises(ValueError, match=r'lora_a_q: checkpoint \(4, 4, 64\) vs model \(4, 2, '
                       r'64\).*saves no config: pass the --cfg-options it was trained with'):
        merge_checkpoint(config, str(bare), str(tmp_path / 'bare_merged.pth'))
    # tools/test.py: the method's config, no option about the method, same predictions
    scores_of = {}
    for run, ckpt, extra in (('tuned', checkpoint, ['model.backbone.prompt.rank=4']),
                             ('merged', out, [])):
        test_main([config, ckpt, '--work-dir', str(tmp_path / run), '--out',
                   str(tmp_path / f'{run}.pkl'), '--cfg-options', *data_options(tiny_vtab),
                   f'experiment_name=lora_test_{run}', *extra])
        with open(tmp_path / f'{run}.pkl', 'rb') as f:
            scores_of[run] = torch.stack([sample['pred_score'] for sample in pickle.load(f)])
    torch.testing.assert_close(scores_of['merged'], scores_of['tuned'], rtol=0, atol=1e-5)


def test_a_merged_checkpoint_into_the_method_names_the_option(tmp_path, demo_backbone):
    """Loaders that keep the method (a runner with TunedCheckpointHook, given the method's
    config) fail in one line naming the option that loads a merged checkpoint."""
    from mmvpt.models.utils import CheckpointMismatchError
    from mmvpt.models.utils.tuned_state import check_checkpoint_fit
    from mmvpt.utils.tuned_checkpoint import merged_methods
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'ssf')
    out = str(tmp_path / 'merged.pth')
    merge_checkpoint(config, checkpoint, out)
    saved = torch.load(out, map_location='cpu', weights_only=False)
    _, model = scores(config, checkpoint, torch.randn(1, 3, 32, 32))
    with pytest.raises(CheckpointMismatchError) as err:
        check_checkpoint_fit(model, saved['state_dict'], 'merged.pth', {},
                             merged=merged_methods(saved['meta']))
    assert str(err.value) == ('merged.pth holds SSF merged into the frozen weights (a model '
                              'without the method): load it with --cfg-options '
                              'model.backbone.prompt=None')
    # merging it again: one line saying it is merged
    from mmvpt.apis.inference import InputError
    with pytest.raises(InputError, match='merged.pth: holds SSF merged into the frozen weights '
                       'already; nothing is left to merge'):
        merge_checkpoint(config, out, str(tmp_path / 'again.pth'))
    # checkpoints merged before meta['mmvpt'] named the method: meta['merged'] still read
    assert merged_methods({'merged': 'LoRA', 'cfg': ''}) == {'backbone.prompt': 'LoRA'}
    assert merged_methods({'mmvpt': dict(tuned_only=True, prompts={})}) == {}


def test_merging_a_model_without_a_method_says_so(tmp_path, demo_backbone):
    from mmvpt.apis.inference import InputError
    config, checkpoint = tuned_task(tmp_path, demo_backbone, 'none')
    with pytest.raises(InputError, match='no method to merge'):
        merge_checkpoint(config, checkpoint, str(tmp_path / 'merged.pth'))
    assert not osp.exists(tmp_path / 'merged.pth')
