"""Every config builds; each method trains an iteration and evaluates on generated VTAB-1k
and FGVC data with the backbone shrunk to a tiny width; generated configs are up to date."""
import copy
import glob
import os.path as osp
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmvpt.apis import prepare_config
from mmvpt.testing import make_fgvc_task, make_vtab_task

from tests.conftest import ROOT, run_tool
from tests.helpers.tiny_models import swin_arch, vit_arch

CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)
METHODS = ('vpt', 'e2vpt', 'cvpt', 'ivpt', 'linear', 'full')
ADAPTER_METHODS = ('lora', 'dora', 'adaptformer', 'adapter', 'adapter_plus', 'ssf', 'bitfit')
# Methods whose generated configs differ from task to task beyond the class count.
PER_TASK_RECIPES = ('e2vpt', 'cvpt', 'ivpt', 'ssf', 'adapter_plus')
TINY = {
    'model.backbone.arch_cfg': vit_arch(depth=2, num_heads=2),
    'model.backbone.img_size': 32,
    'model.backbone.init_cfg': None,
    'model.head.in_channels': 32,
}
TINY_SWIN = {
    'model.backbone.arch_cfg': swin_arch(num_heads=(1, 2)),
    'model.backbone.img_size': 32,
    'model.backbone.init_cfg': None,
    'model.head.in_channels': 32,
}
SIZES = {224: 32, 256: 36}


def shrink_pipeline(pipeline):
    """The config's own pipeline, at 32 pixels instead of 224."""
    pipeline = copy.deepcopy(pipeline)
    for step in pipeline:
        if 'scale' in step:  # (w, h), or one edge (ResizeEdge)
            scale = step['scale']
            step['scale'] = (SIZES.get(scale, scale) if isinstance(scale, int)
                             else tuple(SIZES.get(s, s) for s in scale))
        if 'crop_size' in step:
            step['crop_size'] = SIZES.get(step['crop_size'], step['crop_size'])
    return pipeline


def tiny(cfg, data_root=None):
    if cfg.get('default_scope') != 'mmpretrain' or 'backbone' not in cfg.model:
        return cfg
    if cfg.model.backbone.get('type') == 'mmvpt.PromptedViT':
        cfg.merge_from_dict(TINY)
    elif cfg.model.backbone.get('type') == 'mmvpt.PromptedSwin':
        cfg.merge_from_dict(TINY_SWIN)
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.update(batch_size=16, num_workers=0, persistent_workers=False)
        loader.dataset.pipeline = shrink_pipeline(loader.dataset.pipeline)
        if data_root is not None:
            loader.dataset.data_root = data_root
    return cfg


@pytest.mark.tools
def test_generated_configs_are_up_to_date(tmp_path):
    run_tool('misc/generate_configs.py', '--out', str(tmp_path))
    generated = sorted(osp.relpath(p, tmp_path) for p in glob.glob(str(tmp_path / '*' / '*.py')))
    assert len(generated) == (len(METHODS) + len(ADAPTER_METHODS)) * 24 * 2  # ViT-B and Swin-B
    for path in generated:
        with open(osp.join(ROOT, 'configs', path)) as f, open(tmp_path / path) as g:
            assert f.read() == g.read(), f'{path} differs from tools/misc/generate_configs.py'


@pytest.mark.tools  # slow: a minute and more in process
def test_every_config_builds():
    """Classification configs here; the SETR ones build and train in test_segmentation.py.
    Of the generated configs (byte-equal to the generator's output, tested above), every
    method's on two tasks per backbone, and every task's of the methods whose recipe changes
    per task; all hand-written ones."""
    from mmpretrain.registry import MODELS
    classification = [p for p in CONFIGS if not osp.basename(p).startswith('setr_')]
    assert len(classification) >= (len(METHODS) + len(ADAPTER_METHODS)) * 24 * 2

    def sampled(path):
        method, name = osp.basename(osp.dirname(path)), osp.basename(path)
        generated = name.startswith(('vit-b16_vtab-', 'vit-b16_fgvc-', 'swin-b_vtab-',
                                     'swin-b_fgvc-'))
        return (not generated or name.endswith(('-cifar.py', '-cub.py'))
                or method in PER_TASK_RECIPES and name.startswith('vit-b16_'))
    for path in filter(sampled, classification):
        cfg = tiny(prepare_config(path))
        model = MODELS.build(cfg.model)
        assert model.head.num_classes == cfg.data_preprocessor.num_classes, path


def test_recipes_follow_the_papers():
    def load(name):
        return Config.fromfile(osp.join(ROOT, 'configs', name))
    cfg = load('cvpt/vit-b16_vtab-dmlab.py')
    assert cfg.model.backbone.prompt.num_tokens == 200 and cfg.optim_wrapper.optimizer.lr == 2e-3
    assert cfg.model.backbone.drop_path_rate == 0.1 and cfg.train_dataloader.batch_size == 32
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    cfg = load('cvpt/vit-b16_fgvc-cars.py')
    assert (cfg.model.backbone.prompt.num_tokens, cfg.train_dataloader.batch_size,
            cfg.optim_wrapper.optimizer.weight_decay, cfg.model.head.num_classes) == (
                100, 16, 0.05, 196)
    cfg = load('e2vpt/vit-b16_vtab-caltech101.py')
    assert (cfg.model.backbone.prompt.num_tokens,
            cfg.model.backbone.prompt.num_kv_tokens) == (32, 5)
    assert cfg.train_cfg.max_epochs == 200
    assert (cfg.custom_hooks[-1].type == 'mmvpt.PromptPruningHook'
            and cfg.custom_hooks[-1].prune_after == 100)
    cfg = load('ivpt/vit-b16_vtab-smallnorb_ele.py')
    assert (cfg.model.backbone.prompt.num_tokens,
            cfg.model.backbone.prompt.num_ar_tokens) == (200, 1)
    assert [t.type for t in cfg.train_dataloader.dataset.pipeline][2:4] == ['RandomCrop',
                                                                            'RandomFlip']
    cfg = load('vpt/vit-b16_vtab-svhn.py')
    assert cfg.optim_wrapper.optimizer.type == 'SGD' and cfg.train_dataloader.batch_size == 64
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['head.fc.bias'].decay_mult == 0
    assert load('linear/vit-b16_fgvc-nabirds.py').model.backbone.prompt is None
    assert load('full/vit-b16_vtab-cifar.py').model.backbone.frozen is False
    # adapter-style baselines: SSF's per-task train scripts, NOAH's VTAB-1k LoRA / Adapter script
    cfg = load('ssf/vit-b16_vtab-clevr_dist.py')
    assert (cfg.optim_wrapper.optimizer.type, cfg.optim_wrapper.optimizer.lr,
            cfg.optim_wrapper.optimizer.weight_decay) == ('AdamW', 5e-2, 5e-2)
    assert cfg.model.backbone.drop_path_rate == 0.1 and cfg.train_dataloader.batch_size == 64
    assert cfg.train_cfg.max_epochs == 100 and cfg.param_scheduler[0].end == 10
    cfg = load('ssf/vit-b16_vtab-svhn.py')
    assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay,
            cfg.model.backbone.drop_path_rate) == (1e-2, 5e-5, 0)
    cfg = load('ssf/vit-b16_fgvc-dogs.py')
    assert (cfg.optim_wrapper.optimizer.lr,
            cfg.optim_wrapper.optimizer.weight_decay) == (2.5e-4, 0.05)
    cfg = load('lora/vit-b16_vtab-dmlab.py')
    assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay,
            cfg.train_dataloader.batch_size, cfg.model.backbone.drop_path_rate) == (
                1e-3, 1e-4, 64, 0.1)
    assert load('adapter/vit-b16_vtab-kitti.py').model.backbone.prompt.bottleneck == 8
    prompt = load('adaptformer/vit-b16_vtab-cifar.py').model.backbone.prompt
    assert (prompt.bottleneck, prompt.scale, prompt.dropout) == (64, 0.1, 0.1)
    # Adapter+ normalises as its authors, with the checkpoint's 0.5 / 0.5: 0..255 -> -1..1
    from mmpretrain.models import ClsDataPreprocessor
    for name in ('adapter_plus/vit-b16_vtab-cifar.py', 'adapter_plus/swin-b_fgvc-cars.py'):
        options = dict(load(name).data_preprocessor)
        options.pop('type', None)
        pixels = torch.tensor([0., 127.5, 255.]).view(3, 1, 1).expand(3, 2, 2)
        normalised = ClsDataPreprocessor(**options)(dict(inputs=[pixels]))['inputs']
        assert torch.equal(normalised[0, :, 0, 0], torch.tensor([-1., 0., 1.]).flip(0))
    assert load('adapter/vit-b16_vtab-cifar.py').data_preprocessor.mean == [123.675, 116.28, 103.53]
    # Swin-B: the ViT-B recipe of the task, the backbone swapped
    cfg = load('cvpt/swin-b_vtab-dmlab.py')
    assert (cfg.model.backbone.type, cfg.model.backbone.arch) == ('mmvpt.PromptedSwin',
                                                                  'swin_base_patch4_window7_224')
    assert cfg.model.backbone.prompt.num_tokens == 200 and cfg.optim_wrapper.optimizer.lr == 2e-3
    assert cfg.model.head.in_channels == 1024 and cfg.model.head.num_classes == 6
    cfg = load('e2vpt/swin-b_vtab-caltech101.py')
    assert (cfg.model.backbone.prompt.num_tokens, cfg.train_dataloader.batch_size,
            cfg.optim_wrapper.optimizer.lr) == (32, 80, 2.5 * 80 / 256)
    assert load('ivpt/swin-b_fgvc-cub.py').model.backbone.prompt.num_ar_tokens == 0
    assert load('full/swin-b_vtab-cifar.py').model.backbone.frozen is False
    cfg = load('ssf/swin-b_vtab-eurosat.py')
    assert (cfg.optim_wrapper.optimizer.lr, cfg.model.backbone.drop_path_rate) == (3e-3, 0.2)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    make_vtab_task(str(root / 'vtab'), 'cifar', num_classes=4, num_train=16, num_val=8, num_test=8)
    make_fgvc_task(str(root / 'fgvc'), 'cub', num_train=16, num_val=8, num_test=8)
    return dict(vtab=str(root / 'vtab'), fgvc=str(root / 'fgvc'))


# 'suite', not 'benchmark': pytest-benchmark (common in ML environments) owns that fixture name
@pytest.mark.tools  # slow: a minute and more in process
@pytest.mark.parametrize('method,arch,suite,task', [
    (method, *case) for method in METHODS for case in (
        ('vit-b16', 'vtab', 'cifar'), ('vit-b16', 'fgvc', 'cub'), ('swin-b', 'vtab', 'cifar'))] + [
    (method, 'vit-b16', 'vtab', 'cifar') for method in ADAPTER_METHODS] + [
    ('lora', 'swin-b', 'fgvc', 'cub'), ('ssf', 'swin-b', 'vtab', 'cifar')])
def test_one_iteration_and_evaluation(method, arch, suite, task, data, tmp_path):
    cfg = tiny(prepare_config(osp.join(ROOT, f'configs/{method}/{arch}_{suite}-{task}.py'),
                              work_dir=str(tmp_path)), data[suite])
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    for hook in cfg.custom_hooks:
        if hook.type == 'mmvpt.PromptPruningHook':  # prune after the first epoch
            hook.prune_after = 1
            cfg.train_cfg.max_epochs = 2
    cfg.experiment_name = uuid.uuid4().hex
    runner = Runner.from_cfg(cfg)
    tuned_before = {n: p.detach().clone() for n, p in runner.model.named_parameters()
                    if p.requires_grad}
    runner.train()
    changed = [n for n, p in runner.model.named_parameters()
               if n in tuned_before and not torch.equal(p, tuned_before[n])]
    assert 'head.fc.weight' in changed
    if method not in ('linear', 'full'):
        assert any(n.startswith('backbone.prompt.') for n in changed)
    if method == 'full':
        timm_model = dict(vit_b16='vit', swin_b='swin')[arch.replace('-', '_')]
        assert any(n.startswith(f'backbone.{timm_model}.') for n in changed)
    if method == 'e2vpt':
        token_mask = runner.model.backbone.prompt.token_mask
        first_stage = 2 if arch == 'swin-b' else len(token_mask)  # Swin: pruning in stage 1 only
        assert token_mask[:first_stage].sum() < token_mask[:first_stage].numel()
        assert token_mask[first_stage:].all()
    if method in ADAPTER_METHODS:  # the checkpoint holds what was tuned and nothing else
        saved = torch.load(osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth'),
                           map_location='cpu', weights_only=False)['state_dict']
        assert set(saved) == set(tuned_before) | {
            n for n, _ in runner.model.backbone.prompt.named_buffers(prefix='backbone.prompt')}
    assert runner.test()['accuracy/top1'] == pytest.approx(accuracy_by_hand(runner))


def accuracy_by_hand(runner):
    """Top-1 accuracy (%) on the test split from the model's own per-image scores."""
    correct = total = 0
    runner.model.eval()
    with torch.no_grad():
        for batch in runner.test_dataloader:
            for sample in runner.model.test_step(batch):
                correct += int(sample.pred_score.argmax() == sample.gt_label.item())
                total += 1
    assert total == len(runner.test_dataloader.dataset)
    return 100. * correct / total


def test_new_dataset_by_inheriting_a_config(tmp_path):
    import shutil
    task_dir = make_vtab_task(str(tmp_path), 'my_dataset', num_classes=5, num_train=20,
                              num_val=10, num_test=10)
    for split, source in (('train', 'train800'), ('val', 'val200')):
        shutil.copy(osp.join(task_dir, f'{source}.txt'), osp.join(task_dir, f'{split}.txt'))
    config = osp.join(ROOT, 'configs/cvpt/vit-b16_my-dataset.py')
    with open(config) as f:
        assert len([line for line in f if line.strip() and not line.startswith('#')]) <= 11
    cfg = tiny(prepare_config(config, work_dir=str(tmp_path / 'work')), task_dir)
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    cfg.experiment_name = uuid.uuid4().hex
    runner = Runner.from_cfg(cfg)
    assert runner.model.head.num_classes == 5
    assert runner.model.backbone.prompt.num_tokens == 10  # CVPT's cifar recipe, inherited
    runner.train()
    assert type(runner.train_dataloader.dataset).__name__ == 'ListFileDataset'
    assert len(runner.train_dataloader.dataset) == 20
    assert list(runner.test_dataloader.dataset.metainfo['classes']) == [
        'cat', 'dog', 'fox', 'owl', 'yak']
    assert runner.test()['accuracy/top1'] == pytest.approx(accuracy_by_hand(runner))
