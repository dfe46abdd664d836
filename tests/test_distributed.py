"""tools/dist_train.sh with 2 gloo processes on CPU, on one node and as two nodes: both ranks
train and end equal, also after being killed and resumed; pruning scores are the mean over
ranks."""
import json
import os
import os.path as osp
import socket
import subprocess

import torch

from mmvpt.utils import load_local_checkpoint

from .conftest import DEMO_CONFIG, ROOT, data_options, pretrained_line, run_tool, tool_env
from .helpers.pruning_reference import batches_of, reference_scores
from .test_hooks import make_runner


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
    from .test_resume import assert_same_training_state

    def config(name, kill=''):
        path = tmp_path / f'{name}.py'
        path.write_text(
            f"_base_ = [{DEMO_CONFIG!r}]\n"
            "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.CVPT', num_tokens=4)))\n"
            + pretrained_line(demo_backbone) +
            "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook', "
            "'tests.helpers.kill_hook'])\n"
            f"custom_hooks = [dict(type='mmvpt.TunedCheckpointHook'), dict(type='DumpParamsHook'){kill}]\n"
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


def test_two_process_pruning_scores_are_the_mean_over_both_ranks(tiny_vtab, tmp_path, monkeypatch):
    """Rank r scores on its own shard (images r, r + 2, ...); the scores written and the masks
    must come from the mean of both ranks' scores, recomputed here in one process from the
    weights both ranks had when they scored. (DDP would make the masks agree anyway, from rank
    0's scores alone, at the next forward: this run ends before one.)"""
    config = tmp_path / 'prune_mean_config.py'
    config.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.E2VPT', num_tokens=4, "
        "num_kv_tokens=1, num_segments=4, dropout=0.)))\n"
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook', "
        "'tests.helpers.dump_before_pruning_hook'])\n"
        "custom_hooks = [dict(type='DumpParamsHook'), dict(type='DumpBeforePruningHook', epoch=1), "
        "dict(type='mmvpt.PromptPruningHook', prune_after=1, token_fraction=0.5, segment_fraction=0.5)]\n"
        # Not shuffled: rank r's 2 batches of 16 are images r, r + 2, ... in order.
        "train_dataloader = dict(batch_size=16, sampler=dict(shuffle=False))\n"
        "train_cfg = dict(max_epochs=1)\n")
    work_dir = str(tmp_path / 'work')
    monkeypatch.setenv('PORT', str(free_port()))
    run_tool('dist_train.sh', str(config), '2', '--work-dir', work_dir, '--no-validate',
             '--cfg-options', *data_options(tiny_vtab))

    scored = [torch.load(osp.join(work_dir, f'before_pruning_rank{r}.pth')) for r in (0, 1)]
    for name, value in scored[0].items():
        assert torch.equal(scored[1][name], value), name
    after = [torch.load(osp.join(work_dir, f'params_after_rank{r}.pth'))['buffers'] for r in (0, 1)]
    with open(osp.join(work_dir, 'prompt_pruning.json')) as f:
        result = json.load(f)['prompts']['backbone.prompt']

    runner = make_runner(str(config), tmp_path / 'one_process', tiny_vtab)
    model, method = runner.model, runner.model.backbone.prompt
    model.load_state_dict(scored[0])
    dataset = runner.train_dataloader.dataset
    shards = [batches_of(dataset, range(rank, len(dataset), 2), 16) for rank in (0, 1)]
    assert len(dataset) == 64 and [len(s) for s in shards] == [2, 2]

    def close(got, want):
        torch.testing.assert_close(torch.tensor(got), want, rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())

    def differ(a, b):
        assert (a - b).abs().max() > 0.05 * b.abs().max()

    per_rank = [reference_scores(model, shard)[0] for shard in shards]
    token_scores = (per_rank[0] + per_rank[1]) / 2
    differ(per_rank[0], token_scores)  # rank 0's scores alone would be told apart
    close(result['token_scores'], token_scores)
    ranked = token_scores.sort(-1, descending=True)
    assert (ranked.values[:, 1] - ranked.values[:, 2] > 1e-3 * token_scores.max()).all()
    top = torch.zeros(4, 4).scatter_(-1, ranked.indices[:, :2], 1.)
    for buffers in after:
        assert torch.equal(buffers['backbone.prompt.token_mask'], top)

    with torch.no_grad():  # segments are scored on the token-pruned model
        method.token_mask.copy_(top)
    per_rank = [reference_scores(model, shard)[1] for shard in shards]
    segment_scores = (per_rank[0] + per_rank[1]) / 2
    differ(per_rank[0], segment_scores)
    close(result['segment_scores'], segment_scores)
    segment_masks = [buffers['backbone.prompt.segment_mask'] for buffers in after]
    assert torch.equal(segment_masks[0], segment_masks[1])


def test_two_process_training_with_gradient_checkpointing(tiny_vtab, demo_backbone, tmp_path,
                                                          monkeypatch):
    config = tmp_path / 'cp_config.py'
    config.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, with_cp=True, drop_path_rate=0.1, "
        "prompt=dict(type='mmvpt.CVPT', num_tokens=4)))\n" + pretrained_line(demo_backbone) +
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook'])\n"
        "custom_hooks = [dict(type='DumpParamsHook')]\n")
    monkeypatch.setenv('PORT', str(free_port()))
    work_dir = str(tmp_path / 'work')
    run_tool('dist_train.sh', str(config), '2', '--work-dir', work_dir, '--no-validate',
             '--cfg-options', *data_options(tiny_vtab), 'train_cfg.max_epochs=1')
    before = torch.load(osp.join(work_dir, 'params_before_rank0.pth'))['params']
    after = [torch.load(osp.join(work_dir, f'params_after_rank{r}.pth'))['params'] for r in (0, 1)]
    for name in ('backbone.prompt.prompts', 'head.fc.weight'):
        assert torch.equal(after[0][name], after[1][name])
        assert not torch.equal(after[0][name], before[name])
