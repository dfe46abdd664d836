"""Training hooks on a tiny CVPT model and generated data: tuned-only checkpoints (small,
loadable by tools/test.py, refused when they do not fit) and what methods derive from the
frozen weights (FrozenInitHook; DoRA's magnitudes: test_dora.py). (PromptPruningHook:
test_pruning.py.)"""
import os
import os.path as osp

import pytest
import torch

import mmvpt.models.adapters.dora  # noqa: F401  until the package finds its methods itself
from mmvpt.engine.hooks import CrossAttentionInitHook, FrozenInitHook, TunedCheckpointHook
from mmvpt.engine.hooks.frozen_init_hook import checkpoint_names
from mmvpt.utils import (
    add_frozen_init_hook,
    add_training_hooks,
    load_local_checkpoint,
    prepare_config,
)

from tests.conftest import DEMO_CONFIG, ROOT, data_options, pretrained_line, run_tool
from tests.helpers.runners import make_runner, write_config
from tests.helpers.tiny_models import build, vit_spec


# -- tuned-only checkpoints ----------------------------------------------------------------
def test_vit_b_cvpt_tuned_checkpoint_is_small(tmp_path):
    from types import SimpleNamespace

    from mmpretrain.models import ImageClassifier
    model = ImageClassifier(
        backbone=dict(type='mmvpt.PromptedViT', prompt=dict(type='mmvpt.CVPT', num_tokens=10)),
        head=dict(type='LinearClsHead', num_classes=100, in_channels=768))
    checkpoint = dict(meta=dict(), state_dict=model.state_dict())
    full_bytes = sum(v.numel() * v.element_size() for v in checkpoint['state_dict'].values())
    TunedCheckpointHook().before_save_checkpoint(SimpleNamespace(model=model), checkpoint)
    torch.save(checkpoint, tmp_path / 'tuned.pth')
    assert full_bytes > 330e6
    assert os.path.getsize(tmp_path / 'tuned.pth') < 0.8e6
    assert set(checkpoint['state_dict']) == {'backbone.prompt.prompts', 'head.fc.weight',
                                             'head.fc.bias'}
    assert checkpoint['meta']['mmvpt'] == dict(tuned_only=True, prompts={'backbone.prompt': 'CVPT'})


def test_full_checkpoints_stay_available_by_option():
    from types import SimpleNamespace

    from mmvpt.models import PromptedViT
    model = PromptedViT(**vit_spec(depth=2), prompt=dict(type='mmvpt.VPT', num_tokens=2))
    full = dict(meta={}, state_dict=model.state_dict())
    TunedCheckpointHook(tuned_only=False).before_save_checkpoint(SimpleNamespace(model=model), full)
    assert full['state_dict'].keys() == model.state_dict().keys()
    assert full['meta']['mmvpt']['tuned_only'] is False


@pytest.fixture(scope='module')
def cvpt_run(tiny_vtab, tmp_path_factory):
    """A full fine-tuning run as the 'pretrained' backbone, then CVPT with tuned-only
    checkpoints on top of it."""
    tmp = tmp_path_factory.mktemp('cvpt')
    run_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp / 'pre'), '--cfg-options',
             *data_options(tiny_vtab), 'train_cfg.max_epochs=1')
    backbone = str(tmp / 'pre' / 'epoch_1.pth')
    config = write_config(tmp, "dict(type='mmvpt.CVPT', num_tokens=4, ca_trainable=True)",
                          "dict(type='mmvpt.TunedCheckpointHook')",
                          pretrained_line(backbone)
                          + "train_cfg = dict(max_epochs=2, val_interval=100)\n")
    runner = make_runner(config, tmp / 'work', tiny_vtab)
    runner.train()
    return config, runner, backbone


@pytest.mark.tools
def test_test_tool_runs_from_backbone_plus_tuned_checkpoint(cvpt_run, tiny_vtab, tmp_path):
    import pickle
    config, runner, _ = cvpt_run
    ckpt = osp.join(runner.work_dir, 'epoch_2.pth')
    state = load_local_checkpoint(ckpt)['state_dict']
    assert not any(k.startswith('backbone.vit.') for k in state)
    assert any('.cross_attn.' in k for k in state)  # the learnable copy is tuned
    run_tool('test.py', config, ckpt, '--work-dir', str(tmp_path), '--out',
             str(tmp_path / 'preds.pkl'), '--cfg-options', *data_options(tiny_vtab))
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        from_checkpoint = {p['img_path']: p['pred_score'] for p in pickle.load(f)}
    # Every image's scores are those of the trained model in memory, not only the accuracy.
    runner.model.eval()
    with torch.no_grad():
        in_memory = {s.img_path: s.pred_score for batch in runner.test_dataloader
                     for s in runner.model.test_step(batch)}
    assert from_checkpoint.keys() == in_memory.keys() and len(in_memory) == 32
    for path, scores in in_memory.items():
        torch.testing.assert_close(from_checkpoint[path], scores, rtol=0, atol=1e-6)


def checkpoint_files(work_dir):
    """name -> (size, mtime) of the checkpoints in ``work_dir``."""
    return {f: (os.path.getsize(osp.join(work_dir, f)), os.path.getmtime(osp.join(work_dir, f)))
            for f in os.listdir(work_dir) if f.endswith('.pth')}


@pytest.mark.tools
def test_mismatched_tuned_checkpoint_fails_and_keeps_earlier_checkpoints(cvpt_run, tiny_vtab,
                                                                          tmp_path):
    config, runner, backbone = cvpt_run
    ckpt = osp.join(runner.work_dir, 'epoch_2.pth')
    before = checkpoint_files(runner.work_dir)
    more_prompts = write_config(
        tmp_path, "dict(type='mmvpt.CVPT', num_tokens=6, ca_trainable=True)",
        "dict(type='mmvpt.TunedCheckpointHook')",
        pretrained_line(backbone))
    proc = run_tool('train.py', more_prompts, '--work-dir', runner.work_dir, '--resume', ckpt,
                    '--cfg-options', *data_options(tiny_vtab), check=False)
    assert proc.returncode != 0
    assert 'backbone.prompt.prompts: checkpoint (4, 4, 64) vs model (4, 6, 64)' in proc.stderr
    other_method = write_config(tmp_path, "dict(type='mmvpt.VPT', num_tokens=4)",
                                "dict(type='mmvpt.TunedCheckpointHook')")
    proc = run_tool('test.py', other_method, ckpt, '--work-dir', str(tmp_path / 'test'),
                    '--cfg-options', *data_options(tiny_vtab), check=False)
    assert proc.returncode != 0
    assert "tuned with prompt methods {'backbone.prompt': 'CVPT'}" in proc.stderr
    assert checkpoint_files(runner.work_dir) == before


# -- what methods derive from the frozen weights ----------------------------------------------
@pytest.mark.parametrize('hook_class', [FrozenInitHook, CrossAttentionInitHook])
def test_cross_attention_init_hook_copies_late_backbone_weights_only_once(hook_class):
    from types import SimpleNamespace

    from mmvpt.models import PromptedViT
    model = PromptedViT(**vit_spec(depth=2),
                        prompt=dict(type='mmvpt.CVPT', num_tokens=2, ca_trainable=True))
    runner = SimpleNamespace(model=model)
    # A backbone arriving through load_from, with no cross-attention in the checkpoint.
    backbone = {k: torch.randn_like(v) for k, v in model.state_dict().items()
                if k.startswith('vit.')}
    hook = hook_class()
    hook.after_load_checkpoint(runner, dict(state_dict=backbone))
    model.load_state_dict(backbone, strict=False)
    hook.before_train(runner)
    for ca, block in zip(model.prompt.cross_attn, model.vit.blocks):
        torch.testing.assert_close(ca.qkv.weight, block.attn.qkv.weight, rtol=0, atol=0)
    # A checkpoint that brings trained cross-attention weights keeps them.
    trained = {k: torch.randn_like(v) for k, v in model.state_dict().items()
               if '.cross_attn.' in k}
    hook = hook_class()
    hook.after_load_checkpoint(runner, dict(state_dict=trained))
    model.load_state_dict(trained, strict=False)
    hook.before_test(runner)
    torch.testing.assert_close(model.prompt.cross_attn[0].qkv.weight,
                               trained['prompt.cross_attn.0.qkv.weight'], rtol=0, atol=0)


def test_a_checkpoint_brings_a_derived_tensor_by_its_methods_keys_only():
    names = ('magnitude_q', 'magnitude_v', 'cross_attn')
    keys = ['backbone.prompt.magnitude_q', 'backbone.prompt.magnitude_vv',
            'backbone.prompt.cross_attn.0.qkv.weight', 'neck.prompt.magnitude_v', 'head.fc.weight']
    assert checkpoint_names('backbone.prompt', names, keys) == {'magnitude_q', 'cross_attn'}
    # the same keys seen from a wrapper (DDP, test-time augmentation) or from the backbone alone
    assert checkpoint_names('module.backbone.prompt', names, keys) == {'magnitude_q', 'cross_attn'}
    assert checkpoint_names('prompt', names, ['prompt.magnitude_v.1']) == {'magnitude_v'}
    assert checkpoint_names('backbone.prompt', names, ['module.backbone.prompt.magnitude_v']) == {
        'magnitude_v'}


def test_derived_tensors_a_checkpoint_brought_stay_and_the_others_are_derived_once():
    from types import SimpleNamespace
    torch.manual_seed(0)
    model = build(dict(type='mmvpt.DoRA', rank=2, targets=('q', 'v')))
    runner, method = SimpleNamespace(model=model), model.prompt
    hook = FrozenInitHook()
    trained_q = torch.rand_like(method.magnitude_q)
    hook.after_load_checkpoint(runner, dict(state_dict={'prompt.magnitude_q': trained_q}))
    with torch.no_grad():  # loaded; then other frozen weights than the magnitudes came from
        method.magnitude_q.copy_(trained_q)
        for block in model.blocks:
            block.attn.qkv.weight.mul_(2)
    old_v = method.magnitude_v.detach().clone()
    hook.before_train(runner)
    torch.testing.assert_close(method.magnitude_q, trained_q, rtol=0, atol=0)
    torch.testing.assert_close(method.magnitude_v, 2 * old_v)
    # trained, then tested in the same run: what training learned stays
    with torch.no_grad():
        method.magnitude_v.add_(1)
    learned = method.magnitude_v.detach().clone()
    hook.before_test(runner)
    torch.testing.assert_close(method.magnitude_v, learned, rtol=0, atol=0)


@pytest.mark.parametrize('prompt, added', [
    ("dict(type='mmvpt.DoRA')", True), ("dict(type='mmvpt.CVPT', num_tokens=2)", True),
    ("dict(type='mmvpt.LoRA')", False), ('None', False)])
def test_the_tools_add_the_frozen_init_hook_for_methods_that_derive_tensors(tmp_path, prompt,
                                                                            added):
    config = tmp_path / 'cfg.py'
    config.write_text(f'_base_ = [{DEMO_CONFIG!r}]\nmodel = dict(backbone=dict(prompt={prompt}))\n')
    hook = dict(type='mmvpt.FrozenInitHook')
    assert (hook in add_training_hooks(prepare_config(str(config))).custom_hooks) is added
    tested = add_frozen_init_hook(prepare_config(str(config)))  # what tools/test.py adds
    assert (hook in tested.get('custom_hooks', [])) is added


# (config, prompt that replaces its method or None, a hook of its method, the model's method
# when the hook is dropped or None when it stays)
@pytest.mark.parametrize('config, prompt, hook, dropped_for', [
    ('e2vpt/vit-b16_vtab-cifar.py', "dict(_delete_=True, type='mmvpt.LoRA', rank=4)",
     'mmvpt.PromptPruningHook', 'LoRA'),
    ('e2vpt/vit-b16_vtab-cifar.py', None, 'mmvpt.PromptPruningHook', None),
    ('cvpt/setr_vit-l_ade20k.py', "dict(_delete_=True, type='mmvpt.VPT', num_tokens=2)",
     'mmvpt.CrossAttentionInitHook', 'VPT'),
    ('cvpt/setr_vit-l_ade20k.py', 'None', 'mmvpt.CrossAttentionInitHook', 'none'),
    ('cvpt/setr_vit-l_ade20k.py', "dict(_delete_=True, type='mmvpt.DoRA')",
     'mmvpt.CrossAttentionInitHook', None),
    ('cvpt/setr_vit-l_ade20k.py', None, 'mmvpt.CrossAttentionInitHook', None),
], ids=['e2vpt-to-lora', 'e2vpt', 'cvpt-to-vpt', 'cvpt-to-none', 'cvpt-to-dora', 'cvpt'])
def test_a_methods_hooks_go_when_the_config_switches_to_a_method_they_do_not_serve(
        tmp_path, capsys, config, prompt, hook, dropped_for):
    path = osp.join(ROOT, 'configs', config)
    if prompt is not None:
        path = tmp_path / 'switched.py'
        path.write_text(f"_base_ = [{osp.join(ROOT, 'configs', config)!r}]\n"
                        f'model = dict(backbone=dict(prompt={prompt}))\n')
    hooks = [h['type'] for h in add_training_hooks(prepare_config(str(path))).custom_hooks]
    assert (hook in hooks) is (dropped_for is None)
    assert 'mmvpt.TunedCheckpointHook' in hooks  # hooks of no method stay
    assert 'mmvpt.FrozenInitHook' not in hooks  # not added back, nor twice
    dropped = [line for line in capsys.readouterr().err.splitlines() if 'dropped' in line]
    if dropped_for is None:
        assert dropped == []
    else:
        serves = ('methods with prunable prompts (E2VPT)' if 'Pruning' in hook else
                  'methods that derive tensors from the frozen weights (CVPT, DoRA)')
        assert dropped == [f"mmvpt: custom_hooks: {hook} dropped: it serves {serves}, and the "
                           f"model's method is {dropped_for}"]
    # tools/test.py's path too; prepare_config alone (a runner built by hand) keeps the list
    tested = [h['type'] for h in add_frozen_init_hook(prepare_config(str(path))).custom_hooks]
    assert (hook in tested) is (dropped_for is None)
    assert hook in [h['type'] for h in prepare_config(str(path)).custom_hooks]


def test_configs_that_list_the_hook_or_its_former_name_get_no_second_one():
    # the generated CVPT configs inherit no hook from their base config now: the tools add it
    generated = osp.join(ROOT, 'configs/cvpt/swin-b_vtab-cifar.py')
    hooks = [h['type'] for h in add_training_hooks(prepare_config(generated)).custom_hooks]
    assert hooks.count('mmvpt.FrozenInitHook') == 1
    seg = osp.join(ROOT, 'configs/cvpt/setr_vit-l_ade20k.py')  # lists CrossAttentionInitHook
    hooks = [h['type'] for h in add_training_hooks(prepare_config(seg)).custom_hooks]
    assert 'mmvpt.CrossAttentionInitHook' in hooks and 'mmvpt.FrozenInitHook' not in hooks
