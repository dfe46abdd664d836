"""tools/dist_train.sh with 2 gloo processes on CPU, on one node and as two nodes: both ranks
train and end equal, also after being killed and resumed, and with gradient checkpointing; the
slurm scripts' command lines. (Pruning on two processes: test_pruning.py.)"""
import os
import os.path as osp
import subprocess

import pytest
import torch

from mmvpt.utils import load_local_checkpoint

from tests.conftest import (
    DEMO_CONFIG,
    ROOT,
    data_options,
    free_port,
    pretrained_line,
    run_tool,
    tool_env,
)
from tests.helpers.runners import assert_same_training_state

pytestmark = pytest.mark.tools


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
                    '--work-dir', osp.join(work_dir, 'test'), '--cfg-options',
                    *data_options(tiny_vtab))
    assert 'accuracy/top1' in proc.stdout


def test_slurm_scripts_hand_their_arguments_to_srun(tmp_path, monkeypatch):
    fake = tmp_path / 'srun'
    fake.write_text('#!/bin/sh\necho "srun $*"\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f'{tmp_path}:{os.environ["PATH"]}')
    monkeypatch.setenv('GPUS', '16')
    out = run_tool('slurm_train.sh', 'part', 'job', 'cfg.py', 'wd', '--cfg-options', 'a=1').stdout
    assert out.startswith('srun -p part --job-name=job --gres=gpu:8 --ntasks=16')
    assert out.rstrip().endswith(
        'tools/train.py cfg.py --work-dir wd --cfg-options a=1 --launcher slurm')
    out = run_tool('slurm_test.sh', 'part', 'job', 'cfg.py', 'ck.pth', '--tta').stdout
    assert out.rstrip().endswith('tools/test.py cfg.py ck.pth --tta --launcher slurm')


def launch_two_nodes(config, work_dir, data_root, *args):
    """``NNODES=2 NODE_RANK=0|1 tools/dist_train.sh CONFIG 1``: two launchers, one process
    each, as on two machines. Returns both launchers' exit codes."""
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = tool_env()
        env.update(NNODES='2', NODE_RANK=str(node), MASTER_ADDR='127.0.0.1', PORT=port)
        procs.append(subprocess.Popen(
            ['bash', osp.join(ROOT, 'tools/dist_train.sh'), config, '1', '--work-dir', work_dir,
             *args, '--cfg-options', *data_options(data_root)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], outputs


def test_two_nodes_train_killed_and_resumed_equal_an_uninterrupted_run(tiny_vtab, demo_backbone,
                                                                       tmp_path):
    """Multi-node on one machine, prompt dropout on: both ranks end equal, and a run whose
    processes were killed with SIGKILL and resumed ends bit for bit as an uninterrupted one."""

    def config(name, kill=''):
        path = tmp_path / f'{name}.py'
        path.write_text(
            f"_base_ = [{DEMO_CONFIG!r}]\n"
            "model = dict(backbone=dict(frozen=True, "
            "prompt=dict(type='mmvpt.CVPT', num_tokens=4)))\n"
            + pretrained_line(demo_backbone) +
            "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook', "
            "'tests.helpers.kill_hook'])\n"
            "custom_hooks = [dict(type='mmvpt.TunedCheckpointHook'), "
            f"dict(type='DumpParamsHook'){kill}]\n"
            "train_dataloader = dict(batch_size=8)\n"  # 32 images per rank: 4 iterations an epoch
            "train_cfg = dict(max_epochs=3, val_interval=1)\n"
            "default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))\n")
        return str(path)

    uninterrupted, resumed = str(tmp_path / 'uninterrupted'), str(tmp_path / 'resumed')
    codes, outputs = launch_two_nodes(config('run'), uninterrupted, tiny_vtab)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ranks = [torch.load(osp.join(uninterrupted, f'params_after_rank{r}.pth')) for r in (0, 1)]
    assert ranks[0]['world_size'] == 2
    for name, value in ranks[0]['params'].items():
        assert torch.equal(ranks[1]['params'][name], value), name

    codes, _ = launch_two_nodes(config('kill', ", dict(type='KillHook', at_iter=6)"), resumed,
                                tiny_vtab)
    assert codes[0] != 0 and codes[1] != 0
    with open(osp.join(resumed, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('epoch_1.pth')
    codes, outputs = launch_two_nodes(config('run'), resumed, tiny_vtab, '--resume')
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert 'resumed epoch: 1' in outputs[0]
    final = [load_local_checkpoint(osp.join(d, 'epoch_3.pth')) for d in (resumed, uninterrupted)]
    assert len(final[0]['rng_state']) == 2  # both ranks' random states
    assert_same_training_state(*final)
    ranks = [torch.load(osp.join(resumed, f'params_after_rank{r}.pth')) for r in (0, 1)]
    for name, value in ranks[0]['params'].items():
        assert torch.equal(ranks[1]['params'][name], value), name


@pytest.mark.parametrize('prompt, tuned', [
    ("dict(type='mmvpt.CVPT', num_tokens=4)", ['backbone.prompt.prompts']),
    # an adapter-style baseline: A and B of q and v
    ("dict(type='mmvpt.LoRA', rank=2, targets=('q', 'v'))",
     [f'backbone.prompt.lora_{ab}_{row}' for ab in 'ab' for row in 'qv'])], ids=['cvpt', 'lora'])
def test_two_process_training_with_gradient_checkpointing(tiny_vtab, demo_backbone, tmp_path,
                                                          monkeypatch, prompt, tuned):
    config = tmp_path / 'cp_config.py'
    config.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, with_cp=True, drop_path_rate=0.1, "
        f"prompt={prompt}))\n" + pretrained_line(demo_backbone) +
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook'])\n"
        "custom_hooks = [dict(type='DumpParamsHook')]\n")
    monkeypatch.setenv('PORT', str(free_port()))
    work_dir = str(tmp_path / 'work')
    run_tool('dist_train.sh', str(config), '2', '--work-dir', work_dir, '--no-validate',
             '--cfg-options', *data_options(tiny_vtab), 'train_cfg.max_epochs=1')
    before = torch.load(osp.join(work_dir, 'params_before_rank0.pth'))['params']
    after = [torch.load(osp.join(work_dir, f'params_after_rank{r}.pth'))['params'] for r in (0, 1)]
    assert sorted(n for n in after[0] if n.startswith('backbone.prompt.')) == sorted(tuned)
    for name in tuned + ['head.fc.weight']:
        assert torch.equal(after[0][name], after[1][name])
        assert not torch.equal(after[0][name], before[name]), name
