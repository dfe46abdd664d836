"""DoRA on the prompted backbones: equal to Hugging Face peft's ``LoraConfig(use_dora=True)``
on the same timm ViT (outputs and every gradient, float64), its magnitudes derived from the
frozen weights by every route they arrive by and never over trained ones, merged into the
frozen weights (served stacked with other tasks: test_adapters.py)."""
import os.path as osp
import uuid
from types import SimpleNamespace

import pytest
import timm
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmvpt.models.adapters.dora  # noqa: F401  until the package finds its methods itself
from mmvpt.apis import add_training_hooks, prepare_config
from mmvpt.engine.hooks import FrozenInitHook
from mmvpt.engine.hooks.tuned_checkpoint_hook import unwrap
from mmvpt.models import PromptedViT
from mmvpt.utils import load_local_checkpoint

from tests.conftest import data_options, pretrained_line
from tests.helpers.peft_reference import peft_blocks, peft_twin
from tests.helpers.runners import write_config
from tests.helpers.tiny_models import BACKBONES, DEMO_ARCH, VIT, build

DORA = dict(type='mmvpt.DoRA', rank=2, alpha=6, targets=('q', 'v', 'fc1'))
#: peft's comparisons: fused linears trained with dropout (peft's one update per linear draws
#: the masks ours do, in the same order); row targets without it (ours draw one mask per row
#: target, peft one for the qkv linear they share there)
PEFT_CASES = {'linears': (('qkv', 'proj', 'fc1', 'fc2'), 0.2), 'rows': (('q', 'v', 'fc1'), 0.)}


def tensor(method, name, layer):
    return method.layer_of(getattr(method, name), layer)


def magnitudes(method):
    """{(layer, target): a copy of the magnitude}."""
    return {(layer, target): tensor(method, f'magnitude_{target}', layer).detach().clone()
            for layer in range(method.num_layers) for target in method.targets}


def frozen_rows(backbone, layer, target):
    """The rows of block ``layer``'s frozen weight that ``target`` changes, written out."""
    block = backbone.blocks[layer]
    if target in ('q', 'k', 'v'):
        weight = block.attn.qkv.weight
        width = weight.shape[0] // 3
        start = 'qkv'.index(target) * width
        return weight[start:start + width]
    return {'qkv': block.attn.qkv, 'proj': block.attn.proj, 'fc1': block.mlp.fc1,
            'fc2': block.mlp.fc2}[target].weight


def row_norms(backbone):
    """{(layer, target): ||W||} per output row of the frozen weights the method changes."""
    method = backbone.prompt
    return {(layer, target): frozen_rows(backbone, layer, target).detach().norm(dim=-1)
            for layer in range(method.num_layers) for target in method.targets}


def assert_equal_tensors(got, expected, atol=0.):
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=str(key))


def differ(first, second):
    return any(not torch.allclose(first[key], second[key]) for key in first)


def randomised(backbone='vit', seed=0, **options):
    """A float64 tiny model with DoRA whose A, B and magnitudes are all moved off their init."""
    torch.manual_seed(seed)
    model = build({**DORA, **options}, backbone=backbone).double().eval()
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


# -- peft ------------------------------------------------------------------------------------
def paired(method, linear, layer, target, rows, ranks, grad=False):
    """[(ours, peft's)] for block ``layer``'s ``target``: A, B and the magnitude (their
    gradients with ``grad``); peft's are the blocks of its tensors that ours are."""
    ours = [getattr(method, f'{name}_{target}') for name in ('lora_a', 'lora_b', 'magnitude')]
    theirs = [linear.lora_A['default'].weight, linear.lora_B['default'].weight,
              linear.lora_magnitude_vector['default'].weight]
    if grad:
        ours, theirs = [p.grad for p in ours], [p.grad for p in theirs]
    return list(zip([method.layer_of(p, layer) for p in ours],
                    [theirs[0][ranks], theirs[1][rows, ranks], theirs[2][rows]]))


@pytest.mark.parametrize('case', sorted(PEFT_CASES))
def test_dora_equals_peft_on_the_same_timm_vit(case):
    targets, dropout = PEFT_CASES[case]
    torch.manual_seed(0)
    model = build({**DORA, 'targets': targets, 'dropout': dropout}).double()
    model.derive_from_frozen()  # in float64, as peft derives them
    reference = peft_twin(model, use_dora=True, dropout=dropout)
    m, blocks = model.prompt, peft_blocks(model.prompt, reference)
    with torch.no_grad():
        for (layer, target), (linear, rows, ranks) in blocks.items():
            ours, theirs = paired(m, linear, layer, target, rows, ranks)[-1]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)  # the same init
            # a non-zero B, magnitudes off the norms: every term of the output counts
            for ours, theirs in paired(m, linear, layer, target, rows, ranks):
                ours.add_(torch.randn_like(ours) * 0.2)
                theirs.copy_(ours)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plain = reference.base_model.model
    with torch.no_grad():
        model.eval(), reference.eval()
        expected = plain.forward_features(img)[:, 0]
        assert not torch.allclose(expected, model.vit.forward_features(img)[:, 0], atol=1e-3)
        torch.testing.assert_close(model(img)[0], expected, rtol=0, atol=1e-10)
    # training: the same dropout masks, the same outputs, every tuned tensor's gradient
    model.train(), reference.train()
    torch.manual_seed(1)
    ours = model(img)[0]
    torch.manual_seed(1)
    theirs = plain.forward_features(img)[:, 0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    ours.pow(2).sum().backward()
    theirs.pow(2).sum().backward()
    for (layer, target), (linear, rows, ranks) in blocks.items():
        for ours, theirs in paired(m, linear, layer, target, rows, ranks, grad=True):
            assert ours.abs().sum() > 0
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, _ in m.named_parameters(prefix='prompt')}


def test_a_new_dora_computes_the_frozen_model():
    torch.manual_seed(0)
    model = build(DORA).eval()
    plain = build().eval()
    plain.vit.load_state_dict(model.vit.state_dict())
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(img)[0], plain(img)[0], rtol=0, atol=1e-6)


# -- magnitudes from the frozen weights, however they arrive -------------------------------
def test_magnitudes_are_the_row_norms_of_the_init_cfg_weights(demo_backbone):
    model = PromptedViT(arch=VIT, img_size=32, arch_cfg=DEMO_ARCH, prompt=DORA,
                        init_cfg=dict(type='Pretrained', checkpoint=demo_backbone))
    built = magnitudes(model.prompt)
    assert_equal_tensors(built, row_norms(model))  # timm's random init, as built
    model.init_weights()
    assert_equal_tensors(magnitudes(model.prompt), row_norms(model))
    assert differ(magnitudes(model.prompt), built)


def test_the_hook_derives_magnitudes_from_a_late_backbone_and_keeps_trained_ones():
    torch.manual_seed(0)
    model = build(DORA)
    runner = SimpleNamespace(model=model)
    # a backbone arriving by load_from, without magnitudes
    backbone = {k: torch.randn_like(v) for k, v in model.state_dict().items()
                if k.startswith('vit.')}
    hook = FrozenInitHook()
    hook.after_load_checkpoint(runner, dict(state_dict=backbone))
    model.load_state_dict(backbone, strict=False)
    assert differ(magnitudes(model.prompt), row_norms(model))
    hook.before_train(runner)
    assert_equal_tensors(magnitudes(model.prompt), row_norms(model))
    # a tuned checkpoint (resume, tools/test.py) brings trained magnitudes: they stay
    trained = {k: torch.rand_like(v) for k, v in model.state_dict().items() if '.magnitude_' in k}
    hook = FrozenInitHook()
    hook.after_load_checkpoint(runner, dict(state_dict=trained))
    model.load_state_dict(trained, strict=False)
    hook.before_test(runner)
    assert_equal_tensors({k: v for k, v in model.state_dict().items() if k in trained}, trained)


class MagnitudeProbe(Hook):
    """The magnitudes as training or testing starts, after the hooks that set them."""
    priority = 'VERY_LOW'

    def __init__(self):
        self.seen = {}

    def before_train(self, runner):
        self.seen['train'] = magnitudes(unwrap(runner.model).backbone.prompt)

    def before_test(self, runner):
        self.seen['test'] = magnitudes(unwrap(runner.model).backbone.prompt)


def probed_runner(config, work_dir, data_root, **options):
    """The runner tools/train.py builds (its hooks added), with a :class:`MagnitudeProbe`."""
    values = dict(zip([o.split('=')[0] for o in data_options(data_root)], [data_root] * 3))
    cfg = add_training_hooks(prepare_config(config, dict(values, **options), str(work_dir)))
    assert dict(type='mmvpt.FrozenInitHook') in cfg.custom_hooks  # DoRA declares magnitudes
    cfg.experiment_name = uuid.uuid4().hex  # own logger and message hub per runner
    runner = Runner.from_cfg(cfg)
    probe = MagnitudeProbe()
    runner.register_hook(probe)
    return runner, probe


def checkpoint_magnitudes(path, method):
    state = load_local_checkpoint(path)['state_dict']
    return {(layer, target): method.layer_of(state[f'backbone.prompt.magnitude_{target}'], layer)
            for layer in range(method.num_layers) for target in method.targets}


@pytest.fixture(scope='module')
def dora_run(tiny_vtab, demo_backbone, tmp_path_factory):
    """One epoch of DoRA on the demo backbone, tuned-only checkpoints."""
    tmp = tmp_path_factory.mktemp('dora')
    config = write_config(tmp, repr(DORA), "dict(type='mmvpt.TunedCheckpointHook')",
                          pretrained_line(demo_backbone)
                          + "train_cfg = dict(max_epochs=1, val_interval=100)\n")
    runner, _ = probed_runner(config, tmp / 'work', tiny_vtab)
    runner.train()
    return config, osp.join(runner.work_dir, 'epoch_1.pth')


def test_load_from_a_backbone_derives_magnitudes_from_it(dora_run, tiny_vtab, tmp_path):
    config, _ = dora_run
    other = timm.create_model(VIT, pretrained=False, num_classes=0, img_size=32, **DEMO_ARCH)
    path = tmp_path / 'backbone.pth'
    torch.save(dict(state_dict={f'backbone.vit.{k}': v for k, v in other.state_dict().items()}),
               path)
    # no TunedCheckpointHook: a backbone alone is no tuned checkpoint
    runner, probe = probed_runner(config, tmp_path / 'work', tiny_vtab, load_from=str(path),
                                  custom_hooks=[])
    runner.train()
    backbone = unwrap(runner.model).backbone
    torch.testing.assert_close(backbone.vit.blocks[0].attn.qkv.weight,
                               other.blocks[0].attn.qkv.weight)
    seen = probe.seen['train']
    with torch.no_grad():
        other_norms = {(layer, target): frozen_rows(backbone, layer, target).norm(dim=-1)
                       for layer, target in seen}
    assert_equal_tensors(seen, other_norms, atol=1e-6)


@pytest.mark.parametrize('route', ['test', 'resume'])
def test_a_tuned_checkpoint_keeps_its_magnitudes(dora_run, tiny_vtab, tmp_path, route):
    config, checkpoint = dora_run
    if route == 'test':  # what tools/test.py runs
        runner, probe = probed_runner(config, tmp_path / 'work', tiny_vtab, load_from=checkpoint)
        runner.test()
    else:
        runner, probe = probed_runner(config, tmp_path / 'work', tiny_vtab, load_from=checkpoint,
                                      resume=True, **{'train_cfg.max_epochs': 2})
        runner.train()
    method = unwrap(runner.model).backbone.prompt
    trained = checkpoint_magnitudes(checkpoint, method)
    assert differ(trained, row_norms(unwrap(runner.model).backbone))  # training moved them
    assert_equal_tensors(probe.seen[route if route == 'test' else 'train'], trained)


# -- merged, stacked --------------------------------------------------------------------------
@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_merged_weights_compute_dora_in_a_plain_timm_model(backbone):
    model = randomised(backbone)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        adapted = model(img)[0]
        biases = {k: v.clone() for k, v in model.timm_model.state_dict().items()
                  if k.endswith('bias')}
        model.merge_method()
        assert model.prompt is None
        torch.testing.assert_close(model(img)[0], adapted, rtol=0, atol=1e-10)
        merged = model.timm_model.state_dict()
        assert_equal_tensors({k: merged[k] for k in biases}, biases)  # the biases stay
        timm_model = timm.create_model(model.arch, pretrained=False, num_classes=0, img_size=32,
                                       **BACKBONES[backbone][1]['arch_cfg']).double().eval()
        timm_model.load_state_dict(model.timm_model.state_dict(), strict=False)
        features = timm_model.forward_features(img)
        pooled = features[:, 0] if backbone == 'vit' else features.mean(dim=(1, 2))
        torch.testing.assert_close(pooled, adapted, rtol=0, atol=1e-10)
