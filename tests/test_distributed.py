"""tools/dist_train.sh with 2 gloo processes on CPU: both ranks train and end equal."""
import os
import os.path as osp
import socket

import torch

from .conftest import DEMO_CONFIG, data_options, run_tool


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_process_training_ends_with_identical_weights(tiny_vtab, tmp_path, monkeypatch):
    work_dir = str(tmp_path / 'work')  # apart from the config: the runner dumps one there
    config = tmp_path / 'dist_config.py'
    config.write_text(f"_base_ = [{DEMO_CONFIG!r}]\n"
                      "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook'])\n"
                      "custom_hooks = [dict(type='DumpParamsHook')]\n")
    monkeypatch.setenv('PORT', str(free_port()))
    run_tool('dist_train.sh', str(config), '2', '--work-dir', work_dir, '--cfg-options',
             *data_options(tiny_vtab), 'train_cfg.max_epochs=1', '--no-validate')

    def load(stage, rank):
        return torch.load(osp.join(work_dir, f'params_{stage}_rank{rank}.pth'))

    after = [load('after', 0), load('after', 1)]
    before = load('before', 0)
    assert after[0]['world_size'] == after[1]['world_size'] == 2
    assert after[0]['params'].keys() == after[1]['params'].keys()
    for name in after[0]['params']:
        torch.testing.assert_close(after[0]['params'][name], after[1]['params'][name],
                                   rtol=0, atol=0)
    # Training changed the weights: the check above is not two untouched copies.
    assert not torch.equal(after[0]['params']['head.fc.weight'], before['params']['head.fc.weight'])

    monkeypatch.setenv('PORT', str(free_port()))
    proc = run_tool('dist_test.sh', str(config), osp.join(work_dir, 'epoch_1.pth'), '2',
                    '--work-dir', osp.join(work_dir, 'test'), '--cfg-options', *data_options(tiny_vtab))
    assert 'accuracy/top1' in proc.stdout


def test_two_process_pruning_prunes_the_same_tokens_on_every_rank(tiny_vtab, tmp_path, monkeypatch):
    config = tmp_path / 'prune_config.py'
    config.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.E2VPT', num_tokens=6, "
        "num_kv_tokens=1, num_segments=4)))\n"
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook'])\n"
        "custom_hooks = [dict(type='DumpParamsHook'), dict(type='mmvpt.PromptPruningHook', "
        "prune_after=1, token_fraction=0.5, segment_fraction=0.25)]\n"
        "train_cfg = dict(max_epochs=2)\n")
    monkeypatch.setenv('PORT', str(free_port()))
    run_tool('dist_train.sh', str(config), '2', '--work-dir', str(tmp_path), '--no-validate',
             '--cfg-options', *data_options(tiny_vtab))
    ranks = [torch.load(osp.join(str(tmp_path), f'params_after_rank{r}.pth')) for r in (0, 1)]
    for name in ('backbone.prompt.token_mask', 'backbone.prompt.segment_mask'):
        masks = [r['buffers'][name] for r in ranks]
        assert torch.equal(masks[0], masks[1])
        assert 0 < masks[0].sum() < masks[0].numel()  # something pruned, something kept
    assert ranks[0]['buffers']['backbone.prompt.token_mask'].sum(1).tolist() == [3.] * 4
    assert osp.isfile(osp.join(str(tmp_path), 'prompt_pruning.json'))


def test_slurm_scripts_hand_their_arguments_to_srun(tmp_path, monkeypatch):
    fake = tmp_path / 'srun'
    fake.write_text('#!/bin/sh\necho "srun $*"\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f'{tmp_path}:{os.environ["PATH"]}')
    monkeypatch.setenv('GPUS', '16')
    out = run_tool('slurm_train.sh', 'part', 'job', 'cfg.py', 'wd', '--cfg-options', 'a=1').stdout
    assert out.startswith('srun -p part --job-name=job --gres=gpu:8 --ntasks=16')
    assert out.rstrip().endswith('tools/train.py cfg.py --work-dir wd --cfg-options a=1 --launcher slurm')
    out = run_tool('slurm_test.sh', 'part', 'job', 'cfg.py', 'ck.pth', '--tta').stdout
    assert out.rstrip().endswith('tools/test.py cfg.py ck.pth --tta --launcher slurm')
