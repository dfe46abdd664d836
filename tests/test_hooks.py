"""Training hooks on a tiny E²VPT / CVPT model and generated data: pruning + rewinding in
one run, resume at every point, tuned-only checkpoints, cross-attention init."""
import json
import os
import os.path as osp
import uuid

import pytest
import torch
from mmengine.runner import Runner

from mmvpt.apis import prepare_config
from mmvpt.engine.hooks import (CrossAttentionInitHook, PromptPruningHook, TunedCheckpointHook,
                                tuned_state_keys)
from mmvpt.utils import load_local_checkpoint

from .conftest import DEMO_CONFIG, data_options, run_tool

E2VPT = "dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4, dropout=0.)"


def write_config(tmp_path, prompt, hooks, extra=''):
    path = tmp_path / f'cfg_{uuid.uuid4().hex[:6]}.py'
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        f"model = dict(backbone=dict(frozen=True, prompt={prompt}))\n"
        f"custom_imports = dict(imports=['mmvpt', 'tests.helpers.snapshot_hook'])\n"
        f"custom_hooks = [{hooks}]\n"
        "param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1),\n"
        "                   dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=2)]\n"
        "train_cfg = dict(max_epochs=4, val_interval=100)\n"
        "default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=10))\n"
        "randomness = dict(seed=0, deterministic=True)\n" + extra)
    return str(path)


PRUNING = ("dict(type='mmvpt.PromptPruningHook', prune_after=2, token_fraction=0.5, "
           "segment_fraction=0.5), dict(type='mmvpt.TunedCheckpointHook'), "
           "dict(type='SnapshotAfterPruningHook', epoch=2)")


def make_runner(config, work_dir, data_root, **options):
    cfg = prepare_config(config, dict(zip([o.split('=')[0] for o in data_options(data_root)],
                                          [data_root] * 3), **options), str(work_dir))
    cfg.experiment_name = uuid.uuid4().hex  # own logger and message hub per runner
    return Runner.from_cfg(cfg)


def method_of(runner):
    return runner.model.backbone.prompt


def tuned(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()
            if k in tuned_state_keys(runner.model)}


@pytest.fixture(scope='module')
def pruned_run(tiny_vtab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('prune')
    config = write_config(tmp, E2VPT, PRUNING)
    runner = make_runner(config, tmp / 'work', tiny_vtab)
    runner.train()
    return config, runner


def test_pruning_masks_json_and_report(pruned_run):
    config, runner = pruned_run
    m = method_of(runner)
    assert m.token_mask.sum(1).tolist() == [2.] * 4  # half of 4 tokens per block
    kept = m.token_mask.bool()
    assert (m.segment_mask[~kept] == 0).all()
    # 2 kept tokens x 4 segments per block, half pruned, each kept token keeps one at least
    assert m.segment_mask.sum((1, 2)).tolist() == [4.] * 4
    assert (m.segment_mask[kept].sum(-1) >= 1).all()
    with open(osp.join(runner.work_dir, 'prompt_pruning.json')) as f:
        result = json.load(f)['prompts']['backbone.prompt']
    assert result['kept_tokens'] == [row.nonzero().flatten().tolist() for row in m.token_mask]
    assert len(result['token_scores']) == 4 and len(result['segment_scores'][0]) == 4
    # tuned after pruning: 4 blocks x 4 segments x 16 dims + KV 4x4x2x16 + head 4x64+4
    log = open(next(osp.join(runner.log_dir, f) for f in os.listdir(runner.log_dir)
                    if f.endswith('.log'))).read()
    assert 'prompt pruning done; tuned parameters: 1,028 of' in log


def test_rewinding_restores_start_values_and_restarts_schedule(pruned_run):
    _, runner = pruned_run
    snap = next(h for h in runner.hooks if type(h).__name__ == 'SnapshotAfterPruningHook')
    assert snap.before.keys() == snap.after.keys()
    for name in snap.before:
        torch.testing.assert_close(snap.after[name], snap.before[name], rtol=0, atol=0)
    # The warm-up starts again: lr back at 0.1 x base after the stage switch.
    assert snap.lrs == pytest.approx([2e-3 * 0.1])
    assert runner.optim_wrapper.optimizer.param_groups[0]['initial_lr'] == 2e-3


@pytest.mark.parametrize('resume_epoch', [1, 2, 3])
def test_kill_and_resume_matches_uninterrupted_run(pruned_run, tiny_vtab, tmp_path, resume_epoch):
    config, full = pruned_run
    checkpoint = osp.join(full.work_dir, f'epoch_{resume_epoch}.pth')
    runner = make_runner(config, tmp_path, tiny_vtab, resume=True, load_from=checkpoint)
    runner.train()
    expected, got = tuned(full), tuned(runner)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_pruned_checkpoint_is_tuned_only_and_carries_the_result(pruned_run):
    _, runner = pruned_run
    ckpt = load_local_checkpoint(osp.join(runner.work_dir, 'epoch_4.pth'))
    assert not any(k.startswith('backbone.vit.') for k in ckpt['state_dict'])
    assert {'backbone.prompt.token_mask', 'backbone.prompt.segment_mask',
            'backbone.prompt.prompts', 'head.fc.weight'} <= set(ckpt['state_dict'])
    assert ckpt['prompt_pruning']['pruned'] is True
    torch.testing.assert_close(ckpt['state_dict']['backbone.prompt.token_mask'],
                               method_of(runner).token_mask)


def test_pruning_hook_bad_input(tiny_vtab, tmp_path):
    for value in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=f'token_fraction={value!r}'):
            PromptPruningHook(prune_after=1, token_fraction=value)
    with pytest.raises(ValueError, match='segment_fraction=1'):
        PromptPruningHook(prune_after=1, segment_fraction=1)
    config = write_config(tmp_path, "dict(type='mmvpt.CVPT', num_tokens=2)",
                          "dict(type='mmvpt.PromptPruningHook', prune_after=1)")
    runner = make_runner(config, tmp_path / 'w', tiny_vtab)
    with pytest.raises(ValueError, match=r"prunable.*\['CVPT'\]"):
        runner.train()


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
    assert set(checkpoint['state_dict']) == {'backbone.prompt.prompts', 'head.fc.weight', 'head.fc.bias'}
    assert checkpoint['meta']['mmvpt'] == dict(tuned_only=True, prompts={'backbone.prompt': 'CVPT'})


def test_full_checkpoints_stay_available_by_option():
    from types import SimpleNamespace

    from mmvpt.models import PromptedViT
    model = PromptedViT(arch='vit_base_patch16_224', img_size=32,
                        arch_cfg=dict(patch_size=8, embed_dim=32, depth=2, num_heads=4),
                        prompt=dict(type='mmvpt.VPT', num_tokens=2))
    full = dict(meta={}, state_dict=model.state_dict())
    TunedCheckpointHook(tuned_only=False).before_save_checkpoint(SimpleNamespace(model=model), full)
    assert full['state_dict'].keys() == model.state_dict().keys()
    assert full['meta']['mmvpt']['tuned_only'] is False


def pretrained(checkpoint):
    """Config line that sets the backbone's init_cfg."""
    return f"model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint={checkpoint!r})\n"


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
                          pretrained(backbone) + "train_cfg = dict(max_epochs=2, val_interval=100)\n")
    runner = make_runner(config, tmp / 'work', tiny_vtab)
    runner.train()
    return config, runner, backbone


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


def test_mismatched_tuned_checkpoint_fails_and_keeps_earlier_checkpoints(cvpt_run, tiny_vtab, tmp_path):
    config, runner, backbone = cvpt_run
    ckpt = osp.join(runner.work_dir, 'epoch_2.pth')
    before = checkpoint_files(runner.work_dir)
    more_prompts = write_config(
        tmp_path, "dict(type='mmvpt.CVPT', num_tokens=6, ca_trainable=True)",
        "dict(type='mmvpt.TunedCheckpointHook')",
        pretrained(backbone))
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


def test_cross_attention_init_hook_copies_late_backbone_weights_only_once():
    from types import SimpleNamespace

    from mmvpt.models import PromptedViT
    model = PromptedViT(arch='vit_base_patch16_224', img_size=32,
                        arch_cfg=dict(patch_size=8, embed_dim=32, depth=2, num_heads=4),
                        prompt=dict(type='mmvpt.CVPT', num_tokens=2, ca_trainable=True))
    runner = SimpleNamespace(model=model)
    # A backbone arriving through load_from, with no cross-attention in the checkpoint.
    backbone = {k: torch.randn_like(v) for k, v in model.state_dict().items() if k.startswith('vit.')}
    hook = CrossAttentionInitHook()
    hook.after_load_checkpoint(runner, dict(state_dict=backbone))
    model.load_state_dict(backbone, strict=False)
    hook.before_train(runner)
    for ca, block in zip(model.prompt.cross_attn, model.vit.blocks):
        torch.testing.assert_close(ca.qkv.weight, block.attn.qkv.weight, rtol=0, atol=0)
    # A checkpoint that brings trained cross-attention weights keeps them.
    trained = {k: torch.randn_like(v) for k, v in model.state_dict().items()
               if '.cross_attn.' in k}
    hook = CrossAttentionInitHook()
    hook.after_load_checkpoint(runner, dict(state_dict=trained))
    model.load_state_dict(trained, strict=False)
    hook.before_test(runner)
    torch.testing.assert_close(model.prompt.cross_attn[0].qkv.weight,
                               trained['prompt.cross_attn.0.qkv.weight'], rtol=0, atol=0)
