"""Adapter+ (``mmvpt.AdapterPlus``): on timm's own ViT and Swin blocks it computes what the
authors' adapter does (tests/helpers/adapter_plus_reference.py), outputs and the gradients of
every tuned tensor, in float64, at each position the paper compares; it starts from their
init; its drop-path drops whole samples; its counts on ViT-B and Swin-B; its base config
trains it (and the head) alone with the authors' weight decay and schedule; several tasks
serve in one batch."""
import math
import os.path as osp
import uuid

import pytest
import torch
import torch.nn as nn

import mmvpt.models.adapters.adapter_plus  # noqa: F401  registers mmvpt.AdapterPlus
from mmvpt.datasets.fgvc import FGVC_TASKS
from mmvpt.datasets.vtab import VTAB_TASKS
from mmvpt.models import PromptedSwin, PromptedViT
from mmvpt.models.adapters.adapter_plus import FGVC_WIDTHS, VTAB_OPT_WIDTHS, AdapterPlus
from mmvpt.models.prompts import display_name
from mmvpt.registry import MODELS

from ..helpers.adapter_plus_reference import (
    ReferenceAdapter,
    swin_features,
    vit_block,
    vit_features,
)
from ..helpers.tiny_models import ROOT, build, peaked, vit_arch

#: the method's tensors -> the reference adapter's, per block
TENSORS = (('down_weight', 'down.weight'), ('down_bias', 'down.bias'), ('up_weight', 'up.weight'),
           ('up_bias', 'up.bias'), ('scale', 'scaling'), ('norm_weight', 'norm.weight'),
           ('norm_bias', 'norm.bias'))
# the positions of the paper, and the inner choices it ablates
CASES = {
    'adapter_plus': {},
    'pre': dict(position='pre'),
    'parallel': dict(position='parallel'),
    'intermediate': dict(position='intermediate'),
    'learned_norm_lora': dict(scaling='learned', norm=True, init='lora'),
    'fixed_relu_bert': dict(scaling=0.5, activation='relu', init='bert', position='pre'),
}
# the analytic std of a normal truncated at +-2 std, in units of its std: sqrt(1 - 4 phi(2) / Z)
TRUNCATED_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi)
                          / math.erf(2 / math.sqrt(2)))


def adapter_plus(**options):
    return dict(type='mmvpt.AdapterPlus', **{'bottleneck': 4, **options})


def randomised(backbone='vit', seed=0, **options):
    """A float64 tiny model (timm weights moved for peaked attention, the same for every
    ``seed``) whose adapter tensors are all moved away from their init by ``seed``'s noise."""
    model = peaked(adapter_plus(**options), backbone).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.2)
    return model


def present(method):
    """(method tensor name, reference tensor name) of the tensors ``method`` has."""
    branch = method.placement[0]
    return [(f'{branch}_{name}', ref) for name, ref in TENSORS
            if hasattr(method, f'{branch}_{name}')]


def authors(**options):
    """The authors' Adapter+ (conf/adapter/{base_adapter,adapter_plus}.yaml, the ViT's GELU),
    with ``options`` of the paper's ablations."""
    return {**dict(position='post', scaling='channel', norm=False, activation='gelu'), **options}


def reference_adapters(model, position='post', scaling='channel', norm=False, activation='gelu',
                       **_):
    """One reference adapter per block, as the authors' with these options, holding copies of
    the model's adapter tensors."""
    m, refs = model.prompt, []
    for layer in range(m.num_layers):
        ref = ReferenceAdapter(m.layer_dims[layer], m.bottleneck, scaling=scaling, norm=norm,
                               activation=dict(gelu=nn.GELU, relu=nn.ReLU)[activation]).double()
        with torch.no_grad():
            for name, ref_name in present(m):
                ref.get_parameter(ref_name).copy_(m.layer_of(getattr(m, name), layer))
        refs.append(ref.train(model.training))
    return refs


def layer_grad(method, name, layer):
    """The gradient of block ``layer``'s slice of the per-layer tensor ``name``."""
    stage, index = method.stage_of(layer)
    return method.stage_tensors(getattr(method, name))[stage].grad[index]


def assert_same_outputs_and_grads(model, refs, out, expected):
    weights = torch.randn(out.shape, dtype=out.dtype)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    m = model.prompt
    for layer, ref in enumerate(refs):
        for name, ref_name in present(m):
            want = ref.get_parameter(ref_name).grad
            assert want.abs().sum() > 0, (name, layer)
            torch.testing.assert_close(layer_grad(m, name, layer), want, rtol=0, atol=1e-10,
                                       msg=f'{name} of block {layer}')
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {f'prompt.{n}' for n, _ in m.named_parameters()}


# -- the authors' adapter on timm's blocks ------------------------------------------------------
@pytest.mark.parametrize('case', CASES)
def test_vit_equals_the_authors_adapter_on_timms_blocks(case):
    model = randomised('vit', **CASES[case], drop_path=0.).train()
    options = authors(**CASES[case])
    refs = reference_adapters(model, **options)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = model(img)[0]
    expected = vit_features(model.vit, refs, img, options['position'])
    with torch.no_grad():  # the adapters matter
        assert not torch.allclose(model.vit.forward_features(img)[:, 0], expected, atol=1e-3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert_same_outputs_and_grads(model, refs, out, expected)


@pytest.mark.parametrize('case', ['adapter_plus', 'learned_norm_lora'])
def test_swin_equals_the_authors_adapter_after_each_timm_block(case):
    model = randomised('swin', **CASES[case], drop_path=0.).train()
    refs = reference_adapters(model, **authors(**CASES[case]))
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = model(img)[0]
    expected = swin_features(model.swin, refs, img)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert_same_outputs_and_grads(model, refs, out, expected)


def test_drop_path_drops_or_rescales_each_samples_adapter():
    """One block: in training each sample gets the adapter's output either not at all or
    divided by the keep probability (timm's DropPath, as the authors'), both in a batch."""
    torch.manual_seed(0)
    model = build(adapter_plus(drop_path=0.5), arch_cfg=vit_arch(depth=1)).double()
    img = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    (ref, ) = reference_adapters(model)
    vit = model.vit

    def features(scale):
        with torch.no_grad():
            ref.scaling.copy_(model.prompt.mlp_scale[0] * scale)
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(img))))
            return vit.norm(vit_block(vit.blocks[0], ref, x, 'post'))[:, 0]
    dropped, doubled = features(0.), features(2.)
    assert not torch.allclose(dropped, doubled, atol=1e-3)
    with torch.no_grad():
        out = model.train()(img)[0]
        kept = [torch.allclose(row, d, rtol=0, atol=1e-10) for row, d in zip(out, doubled)]
        gone = [torch.allclose(row, d, rtol=0, atol=1e-10) for row, d in zip(out, dropped)]
        assert all(k != g for k, g in zip(kept, gone)) and any(kept) and any(gone)
        # no drop-path in eval mode
        torch.testing.assert_close(model.eval()(img)[0], features(1.), rtol=0, atol=1e-10)


@pytest.mark.tools  # seconds of tracing
@pytest.mark.parametrize('backbone', ['vit', 'swin'])
def test_drop_path_compiles_without_graph_break_and_draws_as_eager(backbone):
    import torch._dynamo
    torch.manual_seed(0)
    model = build(adapter_plus(drop_path=0.5), backbone).train()
    img = torch.randn(4, 3, 32, 32)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(img).graph_break_count == 0

    def step(run):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same masks for both
        out = run(img)[0]
        out.pow(2).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                              if p.grad is not None}
    eager_out, eager_grads = step(model)
    out, grads = step(torch.compile(model, backend='aot_eager', fullgraph=True))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and grads
    for name, want in eager_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-5, atol=1e-6, msg=name)


# -- the authors' init -----------------------------------------------------------------------------
def vit_b_method(**options):
    torch.manual_seed(0)
    return MODELS.build(dict(type='mmvpt.AdapterPlus', num_layers=12, embed_dim=768, num_heads=12,
                             **options))


def test_houlsby_init_as_the_authors():
    m = vit_b_method()
    for name in ('mlp_down_weight', 'mlp_up_weight'):  # truncated normal, std 0.01, cut at 2 std
        w = getattr(m, name).detach()
        assert w.shape == ((12, 8, 768) if 'down' in name else (12, 768, 8))
        assert 0.0195 < w.abs().max() <= 0.02 and abs(w.mean()) < 2e-4
        assert w.std().item() == pytest.approx(0.01 * TRUNCATED_STD, rel=0.02)
    for name in ('mlp_down_bias', 'mlp_up_bias'):
        assert torch.equal(getattr(m, name), torch.zeros_like(getattr(m, name)))
    assert torch.equal(m.mlp_scale, torch.ones(12, 768))  # per channel, ones
    # the reference draws the same distribution
    torch.manual_seed(1)
    ref = torch.cat([ReferenceAdapter(768, 8).down.weight.detach().flatten() for _ in range(12)])
    assert ref.std().item() == pytest.approx(0.01 * TRUNCATED_STD, rel=0.02)
    # so the model does not start as the frozen one (LoRA's init, zero up, does)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for init, same in (('houlsby', False), ('lora', True)):
            torch.manual_seed(0)
            model = build(adapter_plus(init=init)).eval()
            plain = model.vit.forward_features(img)[:, 0]
            assert torch.allclose(model(img)[0], plain, rtol=0, atol=1e-6) == same, init


def test_lora_and_bert_inits_and_the_other_tensors():
    m = vit_b_method(init='lora', scaling='learned', norm=True)
    bound = 768 ** -0.5  # nn.Linear's: kaiming-uniform a = sqrt(5) and its bias, 1 / sqrt(fan in)
    for name in ('mlp_down_weight', 'mlp_down_bias'):
        t = getattr(m, name).detach()
        assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
    assert m.mlp_down_weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    for name in ('mlp_up_weight', 'mlp_up_bias'):
        assert not getattr(m, name).any()
    assert torch.equal(m.mlp_scale, torch.ones(12, 1))  # one learned scale per adapter
    assert torch.equal(m.mlp_norm_weight, torch.ones(12, 768)) and not m.mlp_norm_bias.any()
    m = vit_b_method(init='bert')
    for name in ('mlp_down_weight', 'mlp_up_weight'):
        assert getattr(m, name).std().item() == pytest.approx(0.02, rel=0.02)
    assert not m.mlp_down_bias.any() and not m.mlp_up_bias.any()
    assert {n for n, _ in vit_b_method(scaling=1.).named_parameters()} == {
        'mlp_down_weight', 'mlp_down_bias', 'mlp_up_weight', 'mlp_up_bias'}
    assert {n for n, _ in vit_b_method(position='pre').named_parameters()} == {
        'attn_down_weight', 'attn_down_bias', 'attn_up_weight', 'attn_up_bias', 'attn_scale'}


@pytest.mark.parametrize('options, message', [
    (dict(position='after'), 'position'), (dict(init='xavier'), 'init'),
    (dict(scaling='vector'), 'scaling'), (dict(scaling=True), 'scaling'),
    (dict(drop_path=1.), 'drop_path'), (dict(placement=('mlp', )), 'no option placement'),
    (dict(bottleneck=0), 'bottleneck'), (dict(activation='tanh'), 'activation')])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        build(adapter_plus(**options))


# -- counts ---------------------------------------------------------------------------------------
def test_tuned_parameter_counts_on_vit_b_and_swin_b():
    def count(cls, arch, **options):
        with torch.device('meta'):
            model = cls(arch=arch, prompt=dict(type='mmvpt.AdapterPlus', **options))
        return sum(p.numel() for p in model.prompt.parameters())

    def per_block(width, bottleneck=8):  # down, its bias, up, its bias, the scale vector
        return 2 * bottleneck * width + bottleneck + 2 * width
    vit = 'vit_base_patch16_224'
    assert count(PromptedViT, vit) == 12 * per_block(768) == 165_984
    with torch.device('meta'):  # the authors' adapter module, one per block
        assert 12 * sum(p.numel() for p in ReferenceAdapter(768, 8).parameters()) == 165_984
    assert count(PromptedViT, vit, scaling='learned') == 165_984 - 12 * 767
    assert count(PromptedViT, vit, norm=True, bottleneck=1) == 12 * (per_block(768, 1) + 2 * 768)
    widths, depths = (128, 256, 512, 1024), (2, 2, 18, 2)
    assert count(PromptedSwin, 'swin_base_patch4_window7_224') == sum(
        depth * per_block(width) for width, depth in zip(widths, depths))


# -- declarations ----------------------------------------------------------------------------------
def test_declarations_are_adapter_pluss_own():
    assert display_name(dict(type='mmvpt.AdapterPlus')) == 'Adapter+'
    assert (AdapterPlus.config_folder, AdapterPlus.table_order) == ('adapter_plus', 85)
    assert AdapterPlus.benchmark_rows == {'adapter_plus': (' (8)', dict(bottleneck=8))}
    assert set(AdapterPlus.protocol) == {'vtab', 'fgvc'}
    for benchmark, split in (('vtab', None), ('fgvc', 'trainval')):  # data/fgvc.py: train + val
        protocol = AdapterPlus.protocol[benchmark]
        assert protocol['stages'] == [dict(type='final', seeds=(18, 45, 25), train_split=split)]
        assert protocol['source'].startswith('visinf/adapter_plus conf/experiment/')
    for task in VTAB_OPT_WIDTHS:
        recipe = AdapterPlus.config_recipe('vtab', task)
        assert recipe['prompt'] == dict(bottleneck=8) and recipe['loader'] == dict(drop_last=True)
    widths = {t: AdapterPlus.config_recipe('fgvc', t)['prompt']['bottleneck'] for t in FGVC_TASKS}
    assert widths == dict(cub=2, nabirds=2, flowers=1, dogs=1, cars=32)
    # every task, in mmvpt's names (the authors': cifar100, flowers102, pet, camelyon, ...)
    assert set(VTAB_OPT_WIDTHS) == set(VTAB_TASKS) and set(FGVC_WIDTHS) == set(FGVC_TASKS)
    assert [VTAB_OPT_WIDTHS[t] for t in ('resisc45', 'svhn', 'sun397')] == [32, 16, 1]


# -- the base config: training, weight decay, schedule, FGVC pipelines -----------------------------
BASE = osp.join(ROOT, 'configs/_base_/methods/adapter_plus.py')


def write_config(tmp_path, benchmark, task, classes):
    """What tools/misc/generate_configs.py writes from the recipe, for one task."""
    recipe = AdapterPlus.config_recipe(benchmark, task)
    loader = ''.join(f'{k}={v!r}, ' for k, v in recipe.get('loader', {}).items())
    train, test = ((f', pipeline={{{{_base_.{p}}}}}' for p in recipe['pipelines'])
                   if 'pipelines' in recipe else ('', ''))
    dataset = 'vtab1k' if benchmark == 'vtab' else 'fgvc'
    path = tmp_path / f'adapter_plus_{benchmark}_{task}.py'
    path.write_text(
        f"_base_ = [{BASE!r}, {osp.join(ROOT, f'configs/_base_/datasets/{dataset}.py')!r}]\n"
        f"task = {task!r}\n"
        f"model = dict(backbone=dict(prompt=dict(bottleneck={recipe['prompt']['bottleneck']})), "
        f"head=dict(num_classes={classes}))\n"
        f"data_preprocessor = dict(num_classes={classes}, mean=[127.5] * 3, std=[127.5] * 3)\n"
        f"train_dataloader = dict({loader}dataset=dict(task=task{train}))\n"
        f"val_dataloader = dict(dataset=dict(task=task{test}))\n"
        f"test_dataloader = dict(dataset=dict(task=task{test}))\n")
    return str(path)


def test_base_config_trains_only_the_adapters_and_the_head(tmp_path):
    from mmengine.runner import Runner

    from mmvpt.testing import make_vtab_task
    from mmvpt.utils.launch import prepare_config
    make_vtab_task(str(tmp_path / 'vtab'), 'cifar', num_classes=4, num_train=32, num_val=8,
                   num_test=8)
    cfg = prepare_config(write_config(tmp_path, 'vtab', 'cifar', 100),
                         work_dir=str(tmp_path / 'work'))
    cfg.merge_from_dict({'model.backbone.arch_cfg': vit_arch(), 'model.backbone.img_size': 32,
                         'model.backbone.init_cfg': None, 'model.head.in_channels': 32})
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.update(batch_size=12, num_workers=0, persistent_workers=False)
        loader.dataset.data_root = str(tmp_path / 'vtab')
        loader.dataset.pipeline[1].scale = (32, 32)
    cfg.train_cfg.update(max_epochs=2, val_interval=100)
    cfg.experiment_name = uuid.uuid4().hex
    runner = Runner.from_cfg(cfg)
    model = runner.model
    assert model.backbone.prompt.drop_path == 0.1 and model.backbone.prompt.position == 'post'
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    runner.train()
    # train800val200: 40 images, batch 12, the last incomplete batch dropped: 3 iterations
    assert runner.iter == 2 * 3
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    tuned = {f'backbone.prompt.{n}' for n, _ in model.backbone.prompt.named_parameters()}
    assert changed == tuned | {'head.fc.weight', 'head.fc.bias'}
    # the authors' weight decay: on the projections' and the head's weights only
    names = {id(p): n for n, p in model.named_parameters()}
    groups = runner.optim_wrapper.optimizer.param_groups
    decay = {names[id(p)]: group['weight_decay'] for group in groups for p in group['params']
             if p.requires_grad}
    assert {n for n, wd in decay.items() if wd} == {
        'backbone.prompt.mlp_down_weight', 'backbone.prompt.mlp_up_weight', 'head.fc.weight'}
    assert set(decay.values()) == {0., 1e-4}


def authors_rate(epoch, lr=1e-3, warmup=10, epochs=100):
    """Their LinearWarmupCosineAnnealingLR's closed form (modeling/lr_scheduler.py) at
    ``epoch``: from lr / 100 (lr_start_factor) to lr over the warm-up, then cosine to lr / 1000
    (lr_factor)."""
    start, end = lr / 100, lr / 1000
    if epoch < warmup:
        return start + epoch * (lr - start) / (warmup - 1)
    return end + 0.5 * (lr - end) * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_base_config_schedule_is_the_authors():
    from mmengine.config import Config
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = Config.fromfile(BASE)
    assert (cfg.optim_wrapper.optimizer.type, cfg.optim_wrapper.optimizer.lr,
            cfg.optim_wrapper.optimizer.weight_decay) == ('AdamW', 1e-3, 1e-4)
    assert cfg.train_cfg.max_epochs == 100 and cfg.model.backbone.drop_path_rate == 0.1
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in cfg.param_scheduler]
    for epoch in range(100):  # MMEngine's ParamSchedulerHook steps by_epoch schedulers per epoch
        lr = optimizer.param_groups[0]['lr']
        assert lr == pytest.approx(authors_rate(epoch), rel=1e-9), epoch
        for scheduler in schedulers:
            scheduler.step()


def test_fgvc_pipelines_are_the_authors(tmp_path):
    """The test pipeline crops as theirs (torchvision's Resize(256) and CenterCrop(224),
    bicubic); the train one gives random-resized 224 crops."""
    import numpy as np
    from mmengine.config import Config
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope
    from PIL import Image
    from torchvision import transforms
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(BASE)
    pixels = np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.save(tmp_path / 'bird.png')
    test = Compose(cfg.fgvc_test_crops)(dict(img_path=str(tmp_path / 'bird.png')))
    bicubic = transforms.InterpolationMode.BICUBIC
    theirs = transforms.Compose([transforms.Resize(256, interpolation=bicubic),
                                 transforms.CenterCrop(224), transforms.PILToTensor()])(image)
    ours = test['inputs'].flip(0)  # BGR, as mmpretrain loads it
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours.int() - theirs.int()).abs().max() <= 1
    train = Compose(cfg.fgvc_train_crops)
    crops = [train(dict(img_path=str(tmp_path / 'bird.png')))['inputs'] for _ in range(3)]
    assert all(c.shape == (3, 224, 224) for c in crops) and not torch.equal(crops[0], crops[1])


# -- several tasks in one batch --------------------------------------------------------------------
@pytest.mark.parametrize('backbone', ['vit', 'swin'])
def test_stacked_tasks_give_each_sample_its_own_tasks_output(backbone):
    models = [randomised(backbone, seed, scaling=('channel', 'learned')[backbone == 'swin'],
                         norm=backbone == 'swin') for seed in range(3)]
    img = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        own = [m(img)[0] for m in models]
        assert not torch.allclose(own[0], own[1], atol=1e-3)
        served = models[0]
        states = {f't{i}': m.prompt.state_dict() for i, m in enumerate(models)}
        served.prompt = served.prompt.stacked(states)
        tasks = torch.tensor([2, 0, 1, 1, 2])
        mixed = served(img, tasks=tasks)[0]
    for row, task in enumerate(tasks.tolist()):
        torch.testing.assert_close(mixed[row], own[task][row], rtol=0, atol=1e-10)


def test_refuses_to_merge_and_says_why():
    with pytest.raises(NotImplementedError, match='cannot be merged.*non-linearity'):
        build(adapter_plus()).merge_method()

