"""tools/protocol.py runs E²VPT's protocol end to end on a tiny config and generated VTAB data
(reduced grid: 2 lr x 1 wd; reduced candidates: 1 token count x 2 piece counts; 1 seed;
1 epoch each): the grid, the training before pruning, the importance scores, a rewind run
per candidate mask, the final seed. It is killed in the middle of the rewind stage and
started again: finished runs are not redone, and the final masks are the official selection
of the scores."""
import glob
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_tool, tool_env
from tests.helpers.protocol_runs import dumped_config, last_recorded_val, only, read_json

TINY_E2VPT = """
_base_ = [{base!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(img_size=32, init_cfg=dict(type='Pretrained', checkpoint={backbone!r}),
                  drop_path_rate=0.,
                  arch_cfg=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
                  prompt=dict(num_tokens=4, num_kv_tokens=2, num_segments=8)),
    head=dict(in_channels=32))
pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)),
            dict(type='PackInputs')]
param_scheduler = []
train_cfg = dict(val_interval=1)
train_dataloader = dict(batch_size=16, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root, pipeline=pipeline))
"""
# E2VPT's protocol sets 100 epochs a training; the user's --cfg-options come last and win.
ARGS = ['--lrs', '0.05', '0.01', '--wds', '0', '--seeds', '42', '--token-fractions', '0.5',
        '--piece-fractions', '0.25', '0.5', '--cfg-options', 'train_cfg.max_epochs=1']
# 4 prompts x 0.5 -> 2 masked; 8 pieces x 0.25 / 0.5 -> 2 / 4 masked (at least 4 kept)
CANDIDATES = ('T2_S2', 'T2_S4')


def launches(run_dir):
    return sorted(d for d in os.listdir(run_dir) if d[:8].isdigit())


@pytest.fixture(scope='module')
def e2vpt_run(tmp_path_factory):
    """The protocol killed (SIGKILL of its process group) once the first rewind run has its
    result, then started again to the end: (work dir, the first candidate's result mtime and
    launches before the restart, the restart's output)."""
    from mmvpt.testing import make_vtab_task, write_random_vit
    root = tmp_path_factory.mktemp('e2vpt_protocol')
    make_vtab_task(str(root / 'vtab'), 'cifar', num_classes=4, num_train=48, num_val=32,
                   num_test=32, size=32)
    os.makedirs(root / 'e2vpt')
    config = root / 'e2vpt' / 'tiny_vtab-cifar.py'
    backbone = write_random_vit(root / 'vit.pth', img_size=32, patch_size=8, embed_dim=32,
                                depth=2, num_heads=2)
    config.write_text(TINY_E2VPT.format(base=osp.join(ROOT, 'configs/e2vpt/vit-b16_vtab-cifar.py'),
                                        data_root=str(root / 'vtab'), backbone=backbone))
    work_dir = str(root / 'work')
    argv = [sys.executable, osp.join(ROOT, 'tools/protocol.py'), str(config), '--work-dir',
            work_dir, *ARGS]
    first = osp.join(work_dir, 'rewind', CANDIDATES[0], 'score.json')
    with open(root / 'killed.log', 'w') as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=tool_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 900
        while not osp.isfile(first) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert osp.isfile(first), (root / 'killed.log').read_text()[-3000:]
    assert not osp.isfile(osp.join(work_dir, 'rewind', 'summary.json'))  # killed in stage 5
    before = os.stat(first).st_mtime_ns, launches(osp.dirname(first))
    out = run_tool('protocol.py', str(config), '--work-dir', work_dir, *ARGS).stdout
    return work_dir, before, out


@pytest.mark.tools
def test_stages_before_rewinding(e2vpt_run):
    work_dir = e2vpt_run[0]
    grid = read_json(osp.join(work_dir, 'grid', 'summary.json'))
    scores = {lr: last_recorded_val(osp.join(work_dir, 'grid', f'lr{lr}_wd0'))
              for lr in ('0.05', '0.01')}
    best_lr = 0.05 if scores['0.05'] > scores['0.01'] else 0.01  # ties to the smaller lr
    assert grid['best'] == dict(lr=best_lr, wd=0., score=scores[str(best_lr)])
    for lr in ('0.05', '0.01'):
        cfg = dumped_config(osp.join(work_dir, 'grid', f'lr{lr}_wd0'))
        # the official model learns its masks before pruning; the one-run hook is gone
        assert cfg.model.backbone.prompt.learn_masks is True
        assert 'mmvpt.PromptPruningHook' not in [h['type'] for h in cfg.custom_hooks]
        assert cfg.train_cfg.max_epochs == 1 and cfg.train_dataloader.dataset.split == 'train800'
    trained = read_json(osp.join(work_dir, 'before_pruning', 'trained.json'))
    assert (trained['lr'], trained['wd']) == (best_lr, 0.)
    cfg = dumped_config(osp.join(work_dir, 'before_pruning'))
    assert cfg.model.backbone.prompt.learn_masks is True
    assert cfg.optim_wrapper.optimizer.lr == best_lr
    assert (cfg.train_dataloader.dataset.split, cfg.val_dataloader.dataset.split) == (
        'train800', 'val200')
    scores = read_json(osp.join(work_dir, 'importance', 'scores.json'))
    assert scores['checkpoint'] == trained['checkpoint']
    assert torch.tensor(scores['token_scores']).shape == (4, )
    assert torch.tensor(scores['piece_scores']).shape == (4, 8)
    assert scores['batches'] == 3  # 48 train800 images, batches of 16


@pytest.mark.tools
def test_rewind_resumes_and_picks_the_best_candidate(e2vpt_run):
    from mmvpt.engine.e2vpt_pruning import best_candidate
    work_dir, (mtime, first_launches), out = e2vpt_run
    first = osp.join(work_dir, 'rewind', CANDIDATES[0])
    # the finished candidate was not run again; the killed one was
    assert f'skip rewind run {CANDIDATES[0]}' in out
    assert os.stat(osp.join(first, 'score.json')).st_mtime_ns == mtime
    assert launches(first) == first_launches and len(first_launches) == 1
    assert f'rewind run {CANDIDATES[1]}: ' in out
    assert out.count('[protocol] skip grid run') == 2
    assert 'skip training before pruning' in out and 'skip importance scores' in out
    summary = read_json(osp.join(work_dir, 'rewind', 'summary.json'))
    runs = [dict(tokens=2, pieces=int(name[-1]),
                 score=last_recorded_val(osp.join(work_dir, 'rewind', name)))
            for name in CANDIDATES]
    best = best_candidate(runs)
    assert summary['best'] == dict(tokens=2, pieces=best['pieces'], score=best['score'])
    if runs[0]['score'] == runs[1]['score']:
        assert best['pieces'] == 4  # ties: more tokens masked, then (ours) more pieces
    for name in CANDIDATES:
        cfg = dumped_config(osp.join(work_dir, 'rewind', name))
        hook = cfg.custom_hooks[-1]
        assert (hook.type, hook.tokens, hook.pieces) == ('mmvpt.PromptMaskHook', 2,
                                                         int(name[-1]))
        assert cfg.model.backbone.prompt.prune_mode == 'mask'
        assert not cfg.model.backbone.prompt.get('learn_masks', False)


@pytest.mark.tools
def test_final_masks_are_the_official_selection_of_the_scores(e2vpt_run):
    from mmvpt.engine.e2vpt_pruning import piece_mask_for, token_mask_for
    work_dir = e2vpt_run[0]
    summary = read_json(osp.join(work_dir, 'final', 'summary.json'))
    rewind = read_json(osp.join(work_dir, 'rewind', 'summary.json'))['best']
    grid = read_json(osp.join(work_dir, 'grid', 'summary.json'))['best']
    assert summary['chosen'] == dict(lr=grid['lr'], wd=0., masked_tokens=2,
                                     masked_pieces=rewind['pieces'])
    assert [c['values'] for c in summary['candidates']['rewind']] == [
        dict(tokens=2, pieces=2), dict(tokens=2, pieces=4)]
    assert len(summary['candidates']['grid']) == 2
    scores = read_json(osp.join(work_dir, 'importance', 'scores.json'))
    tokens = token_mask_for(torch.tensor(scores['token_scores']), 2)
    pieces = piece_mask_for(torch.tensor(scores['piece_scores']), rewind['pieces'])
    checkpoint = read_json(osp.join(work_dir, 'final', 'seed42', 'trained.json'))['checkpoint']
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    token_mask = state['backbone.prompt.token_mask']
    segment_mask = state['backbone.prompt.segment_mask']
    assert torch.equal(token_mask, tokens.expand(2, 4))  # every layer: one selection
    assert torch.equal(segment_mask, pieces.expand(2, 4, 8))
    assert tokens.sum() == 2 and (pieces.sum(-1) == 8 - rewind['pieces']).all()
    test_json = only(glob.glob(osp.join(work_dir, 'final', 'seed42', 'test', '*', '*.json')))
    assert summary['test_accuracy'] == {'42': read_json(test_json)['accuracy/top1']}
