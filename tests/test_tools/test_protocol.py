"""tools/protocol.py: VPT's whole protocol (1 P x 2 lr x 1 wd grid, 2 seeds, 1 epoch each) on a
tiny config with generated VTAB-format data, re-running after it, VPT's prompt-length search
picking per task, --print-only for SLURM (arrays too), dist and FGVC, and the errors."""
import glob
import json
import os
import os.path as osp
import re
import shlex
import statistics
import subprocess
import sys

import pytest
from mmengine.config import Config

from mmvpt.protocols.stages import SearchStage
from mmvpt.utils.protocol_results import best_validation, last_validation

from tests.conftest import DEMO_CONFIG, ROOT, run_tool, tool_env
from tests.helpers.protocol_runs import dumped_config, last_recorded_val, only, read_json

TINY_CONFIG = """
_base_ = [{base!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(img_size=32, init_cfg=dict(type='Pretrained', checkpoint={backbone!r}),
                  drop_path_rate=0.,
                  arch_cfg=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
                  prompt=dict(num_tokens=2)),
    head=dict(in_channels=32))
pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)),
            dict(type='PackInputs')]
# a constant lr: the base schedule's 10 warm-up epochs would keep one epoch's lr near 0
param_scheduler = []
train_cfg = dict(max_epochs=1, val_interval=1)
train_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root, pipeline=pipeline))
"""
GRID_AND_SEEDS = ['--num-tokens', '2', '--lrs', '0.01', '0.001', '--wds', '0',
                  '--seeds', '42', '44']
TUNED_LINE = re.compile(r'tuned parameters: ([\d,]+) of ([\d,]+) \(([\d.]+)%\)')


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """A VPT-deep VTAB config shrunk to seconds, in a ``vpt/`` folder (the method's name), on
    a generated 4-class task in the folder the VTAB1k dataset reads for 'cifar', with random
    tiny ViT weights as its pretrained backbone."""
    from mmvpt.testing import make_vtab_task, write_random_vit
    root = tmp_path_factory.mktemp('protocol_data')
    make_vtab_task(str(root / 'vtab'), 'cifar', num_classes=4, num_train=64, num_val=32,
                   num_test=32, size=32)
    os.makedirs(root / 'vpt')
    config = root / 'vpt' / 'tiny_vtab-cifar.py'
    backbone = write_random_vit(root / 'vit.pth', img_size=32, patch_size=8, embed_dim=32,
                                depth=2, num_heads=2)
    config.write_text(TINY_CONFIG.format(
        base=osp.join(ROOT, 'configs/vpt/vit-b16_vtab-cifar.py'), data_root=str(root / 'vtab'),
        backbone=backbone))
    return str(config)


@pytest.fixture(scope='module')
def protocol_run(tiny_config, tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('protocol_run'))
    proc = run_tool('protocol.py', tiny_config, '--work-dir', work_dir, *GRID_AND_SEEDS)
    return work_dir, proc


@pytest.mark.tools
def test_grid_picks_the_highest_recorded_score(protocol_run):
    work_dir, _ = protocol_run
    summary = read_json(osp.join(work_dir, 'grid', 'summary.json'))
    recorded = {lr: last_recorded_val(osp.join(work_dir, 'grid', f'P2_lr{lr}_wd0'))
                for lr in ('0.01', '0.001')}
    assert [(r['lr'], r['wd'], r['score']) for r in summary['runs']] == [
        (0.01, 0.0, recorded['0.01']), (0.001, 0.0, recorded['0.001'])]
    # ties go to the smaller lr, as VPT's find_best_lrwd breaks them
    best_lr = '0.01' if recorded['0.01'] > recorded['0.001'] else '0.001'
    assert summary['best'] == dict(num_tokens=2, lr=float(best_lr), wd=0.0,
                                   score=recorded[best_lr])
    assert (summary['method'], summary['benchmark'], summary['task']) == ('vpt', 'vtab', 'cifar')
    # what the runs trained on: train800 -> val200, their grid lr, wd 0, the first seed
    for lr in (0.01, 0.001):
        cfg = dumped_config(osp.join(work_dir, 'grid', f'P2_lr{lr}_wd0'))
        assert cfg.train_dataloader.dataset.split == 'train800'
        assert cfg.val_dataloader.dataset.split == 'val200'
        assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay) == (lr, 0)
        assert cfg.randomness.seed == 42
        assert cfg.model.backbone.prompt.num_tokens == 2


@pytest.mark.tools
def test_final_stage_tests_every_seed_and_summarises(protocol_run):
    work_dir, _ = protocol_run
    grid = read_json(osp.join(work_dir, 'grid', 'summary.json'))
    summary = read_json(osp.join(work_dir, 'final', 'summary.json'))
    accuracies = {}
    for seed in (42, 44):
        seed_dir = osp.join(work_dir, 'final', f'seed{seed}')
        test_json = only(glob.glob(osp.join(seed_dir, 'test', '*', '*.json')))
        assert osp.basename(test_json) == osp.basename(osp.dirname(test_json)) + '.json'
        accuracies[str(seed)] = read_json(test_json)['accuracy/top1']
        cfg = dumped_config(seed_dir)
        assert cfg.train_dataloader.dataset.split == 'train800val200'
        assert cfg.val_dataloader is None  # --no-validate
        assert cfg.optim_wrapper.optimizer.lr == grid['best']['lr']
        assert cfg.randomness.seed == seed
        assert dumped_config(osp.join(seed_dir, 'test')).test_dataloader.dataset.split == 'test'
    assert summary['test_accuracy'] == accuracies
    assert summary['seeds'] == [42, 44]
    assert summary['mean'] == pytest.approx(statistics.fmean(accuracies.values()))
    assert summary['std'] == pytest.approx(statistics.stdev(accuracies.values()))
    assert (summary['lr'], summary['wd']) == (grid['best']['lr'], grid['best']['wd'])
    assert (summary['method'], summary['benchmark'], summary['task']) == ('vpt', 'vtab', 'cifar')
    # the method and its P, as the runs were configured (the report needs no saved config)
    assert (summary['method_name'], summary['prompt_type'], summary['num_tokens']) == (
        'VPT-deep', 'mmvpt.VPT', 2)
    # every chosen value and every candidate's val score
    assert summary['chosen'] == dict(num_tokens=2, lr=grid['best']['lr'], wd=0.0)
    assert summary['candidates'] == {'grid': [
        dict(values=run['values'], score=run['score']) for run in grid['runs']]}
    assert summary['protocol']['name'] == "VPT's"


@pytest.mark.tools
def test_tuned_parameters_come_from_the_training_log(protocol_run):
    work_dir, _ = protocol_run
    summary = read_json(osp.join(work_dir, 'final', 'summary.json'))
    log = only(glob.glob(osp.join(work_dir, 'final', 'seed42', '*', '*.log')))
    with open(log) as f:
        tuned, total, percent = TUNED_LINE.findall(f.read())[-1]
    assert summary['tuned_params'] == int(tuned.replace(',', ''))
    assert summary['total_params'] == int(total.replace(',', ''))
    assert summary['tuned_percent'] == pytest.approx(float(percent), abs=5e-5)
    assert 0 < summary['tuned_params'] < summary['total_params']


@pytest.mark.tools
def test_rerun_skips_finished_runs(protocol_run, tiny_config):
    work_dir, _ = protocol_run
    files_before = {path: os.stat(path).st_mtime_ns
                    for path in glob.glob(osp.join(work_dir, '**', '*'), recursive=True)
                    if not path.endswith('summary.json')}
    summary_before = read_json(osp.join(work_dir, 'final', 'summary.json'))
    out = run_tool('protocol.py', tiny_config, '--work-dir', work_dir, *GRID_AND_SEEDS).stdout
    assert out.count('[protocol] skip') == 4  # 2 grid runs, 2 seeds
    assert 'tools/train.py' not in out and 'tools/test.py' not in out
    files_after = {path: os.stat(path).st_mtime_ns
                   for path in glob.glob(osp.join(work_dir, '**', '*'), recursive=True)
                   if not path.endswith('summary.json')}
    assert files_after == files_before  # no new launch folder, no checkpoint rewritten
    assert read_json(osp.join(work_dir, 'final', 'summary.json')) == summary_before


@pytest.mark.tools
def test_vpt_searches_the_prompt_length_per_task(tiny_config, tmp_path):
    """One command for two tasks (two configs): each task gets the P of its own best val
    score, the final runs train with it, and the summary records it as the task's P."""
    from mmvpt.testing import make_vtab_task
    data_root = Config.fromfile(tiny_config, import_custom_modules=False).data_root
    make_vtab_task(data_root, 'dtd', num_classes=4, num_train=64, num_val=32, num_test=32,
                   size=32, seed=1, angle_offset=0.5)
    dtd = tmp_path / 'vpt' / 'tiny_vtab-dtd.py'
    os.makedirs(dtd.parent)
    dtd.write_text(f"_base_ = [{tiny_config!r}]\ntask = 'dtd'\n"
                   + ''.join(f"{split}_dataloader = dict(dataset=dict(task='dtd'))\n"
                             for split in ('train', 'val', 'test')))
    work_dir = tmp_path / 'work'
    run_tool('protocol.py', tiny_config, str(dtd), '--work-dir', str(work_dir), '--num-tokens',
             '1', '3', '--lrs', '0.05', '--wds', '0', '--seeds', '42')
    for task in ('cifar', 'dtd'):
        task_dir = work_dir / 'vpt' / f'tiny_vtab-{task}'
        recorded = {p: last_recorded_val(str(task_dir / 'grid' / f'P{p}_lr0.05_wd0'))
                    for p in (1, 3)}
        best = 3 if recorded[3] > recorded[1] else 1  # ties to the smaller P
        summary = read_json(task_dir / 'final' / 'summary.json')
        assert summary['chosen'] == dict(num_tokens=best, lr=0.05, wd=0.)
        assert summary['num_tokens'] == best
        assert len(summary['candidates']['grid']) == 2
        cfg = dumped_config(str(task_dir / 'final' / 'seed42'))
        assert cfg.model.backbone.prompt.num_tokens == best
        assert cfg.train_dataloader.dataset.task == task


def commands(out):
    return [line for line in out.splitlines() if line and not line.startswith('#')]


@pytest.mark.tools
def test_print_only_slurm(tiny_config, tmp_path):
    work_dir = str(tmp_path / 'never_written')
    out = run_tool('protocol.py', tiny_config, '--work-dir', work_dir, *GRID_AND_SEEDS,
                   '--print-only', '--launcher', 'slurm', '--partition', 'gpu', '--gpus', '4',
                   '--job-name', 'tiny').stdout
    assert not osp.exists(work_dir)
    lines = commands(out)
    assert len(lines) == 6  # 2 grid trainings, 2 final trainings, 2 tests
    for line, lr in zip(lines[:2], ('0.01', '0.001')):
        words = shlex.split(line)
        assert words[:3] == ['GPUS=4', 'GPUS_PER_NODE=4', 'bash']
        assert words[3].endswith('tools/slurm_train.sh')
        assert words[4:8] == ['gpu', 'tiny', tiny_config,
                              osp.join(work_dir, 'grid', f'P2_lr{lr}_wd0')]
        assert f'optim_wrapper.optimizer.lr={lr}' in words
        assert 'optim_wrapper.optimizer.weight_decay=0.0' in words
        assert 'train_dataloader.dataset.split=train800' in words
        assert 'val_dataloader.dataset.split=val200' in words
        assert 'randomness.seed=42' in words
    # no grid result yet: the final commands read P, LR and WD from the shell, and it says so
    assert 'the shell variables NUM_TOKENS, LR, WD' in out
    final_train, final_test = lines[2], lines[4]  # the seeds' trainings, then their tests
    assert 'slurm_train.sh gpu tiny' in final_train and '--no-validate' in final_train
    assert 'optim_wrapper.optimizer.lr=${LR}' in final_train
    assert 'model.backbone.prompt.num_tokens=${NUM_TOKENS}' in final_train
    assert 'train_dataloader.dataset.split=train800val200' in final_train
    assert 'slurm_test.sh gpu tiny' in final_test
    assert f'$(cat {osp.join(work_dir, "final", "seed42", "last_checkpoint")})' in final_test
    assert 'randomness.seed=44' in lines[3]


@pytest.mark.tools
def test_print_only_fgvc_default_grid_and_dist_final():
    config = osp.join(ROOT, 'configs/vpt/vit-b16_fgvc-cub.py')  # batch 64; no data needed
    lines = commands(run_tool('protocol.py', config, '--print-only', '--stage', 'grid',
                              '--num-tokens', '10').stdout)
    assert len(lines) == 36
    lrs = [float(re.search(r'optimizer\.lr=(\S+)', line).group(1)) for line in lines]
    wds = [float(re.search(r'weight_decay=(\S+)', line).group(1)) for line in lines]
    # tune_fgvc.py's {50, ..., 0.1} x 64 / 256 (no 0.05), lr outer; wd {0.01, 1e-3, 1e-4, 0}
    assert lrs[::4] == [12.5, 6.25, 2.5, 1.25, 0.625, 0.25, 0.125, 0.0625, 0.025]
    assert wds[:4] == [0.01, 0.001, 0.0001, 0.0]
    assert all('train_dataloader.dataset.split=train ' in line for line in lines)
    assert all('val_dataloader.dataset.split=val ' in line for line in lines)
    # FGVC's grid keeps the best epoch's validation, so every epoch validates
    assert all('train_cfg.val_interval=1' in line for line in lines)
    assert 'work_dirs/protocol/vpt/vit-b16_fgvc-cub/grid/P10_lr12.5_wd0.01' in lines[0]

    train, test = commands(run_tool(
        'protocol.py', config, '--print-only', '--stage', 'final', '--lr', '0.1', '--wd', '0.001',
        '--num-tokens', '10', '--seeds', '42', '--launcher', 'dist', '--gpus', '2').stdout)
    assert re.search(r'dist_train\.sh \S+vit-b16_fgvc-cub\.py 2 ', train)
    assert 'train_dataloader.dataset.split=train ' in train  # VPT's train.py: FGVC on train
    assert 'optim_wrapper.optimizer.lr=0.1 ' in train
    assert 'weight_decay=0.001 ' in train
    checkpoint = r'"\$\(cat \S+/seed42/last_checkpoint\)"'
    assert re.search(rf'dist_test\.sh \S+vit-b16_fgvc-cub\.py {checkpoint} 2 ', test)
    assert 'test_dataloader.dataset.split=test' in test

    # the default grid is for the total batch: 2 processes x 64
    out = run_tool('protocol.py', config, '--print-only', '--stage', 'grid', '--launcher', 'dist',
                   '--gpus', '2', '--num-tokens', '10').stdout
    assert 'optim_wrapper.optimizer.lr=25.0 ' in commands(out)[0]


@pytest.mark.tools
def test_non_benchmark_config_fails_clearly():
    proc = run_tool('protocol.py', DEMO_CONFIG, '--print-only', check=False)
    assert proc.returncode == 1
    assert "train_dataloader.dataset.type='CustomDataset'" in proc.stderr
    assert "the protocols run VTAB-1k ('mmvpt.VTAB1k') and FGVC ('mmvpt.FGVC')" in proc.stderr
    assert 'Traceback' not in proc.stderr


def one_line_error(proc):
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith('protocol.py: error: ') and proc.stderr.count('\n') == 1
    return proc.stderr


def run_failure(proc):
    """The protocol's error after a failed run (whose own output comes before it)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    return proc.stderr[proc.stderr.index('protocol.py: error: '):]


@pytest.mark.tools
def test_failed_training_names_command_and_work_dir(tiny_config, tmp_path):
    # a python for the launcher's workers that fails with status 3 (and passes
    # find_python.sh's check of the modules by running the real one)
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/bash\nfor arg; do case $arg in */train.py) exit 3;; esac; done\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    env = dict(tool_env(), PYTHON=str(fake))
    work_dir = tmp_path / 'dist'
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/protocol.py'), tiny_config,
                           '--work-dir', str(work_dir), *GRID_AND_SEEDS, '--launcher', 'dist'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    message = run_failure(proc)
    assert 'grid run P2_lr0.01_wd0 failed (exit 3)' in message
    assert f'work dir {work_dir / "grid" / "P2_lr0.01_wd0"}' in message
    assert 'tools/dist_train.sh' in message and 'optim_wrapper.optimizer.lr=0.01' in message
    # a run that fails by itself, with the local launcher: its log is named
    proc = run_tool('protocol.py', tiny_config, '--work-dir', str(tmp_path / 'local'),
                    *GRID_AND_SEEDS, '--cfg-options', 'model.backbone.type=mmvpt.NoSuchViT',
                    check=False)
    message = run_failure(proc)
    assert 'grid run P2_lr0.01_wd0 failed (exit 1)' in message
    assert 'tools/train.py' in message and 'optim_wrapper.optimizer.lr=0.01' in message
    assert "model.backbone.type='mmvpt.NoSuchViT'" in proc.stdout + proc.stderr


@pytest.mark.tools
def test_final_stage_without_lr_fails_clearly(tiny_config, tmp_path):
    proc = run_tool('protocol.py', tiny_config, '--work-dir', str(tmp_path), '--stage', 'final',
                    check=False)
    assert re.search('--stage final needs stage grid finished .* run --stage grid first, or '
                     '--stage all', one_line_error(proc))


@pytest.mark.tools
def test_protocol_keys_cannot_be_overridden(tiny_config, tmp_path):
    proc = run_tool('protocol.py', tiny_config, '--work-dir', str(tmp_path), '--print-only',
                    '--cfg-options', 'randomness.seed=3', check=False)
    assert 'randomness.seed: set by the protocol' in one_line_error(proc)


def test_validations_and_the_search_winner(tmp_path):
    # two launches: the newest one counts, and in it the last (or the best) validation line
    old, new = tmp_path / '20250101_000000', tmp_path / '20250102_000000'
    for launch, lines in ((old, [{'accuracy/top1': 99.0, 'step': 10}]),
                          (new, [{'loss': 1.0, 'step': 5}, {'accuracy/top1': 60.0, 'step': 1},
                                 {'loss': 0.5, 'step': 10}, {'accuracy/top1': 80.0, 'step': 2},
                                 {'accuracy/top1': 80.0, 'step': 3},
                                 {'accuracy/top1': 70.0, 'step': 4}])):
        os.makedirs(launch / 'vis_data')
        (launch / 'vis_data' / 'scalars.json').write_text(
            ''.join(json.dumps(line) + '\n' for line in lines))
    score, step, _ = last_validation(str(tmp_path))
    assert (score, step) == (70.0, 4)
    score, step, _ = best_validation(str(tmp_path))
    assert (score, step) == (80.0, 2)  # the first of equals
    # the highest score; ties to the smaller lr (VPT's rule), then the smaller P, then the
    # first in run order
    search = SearchStage(space=dict(num_tokens=(10, 5), lr=(2., 1.), wd=(0.1, 0.)),
                         prefer=('lr', 'num_tokens'))

    def runs(*scores):
        return [dict(values=dict(num_tokens=p, lr=lr, wd=wd), score=score)
                for (p, lr, wd), score in zip(
                    [(p, lr, wd) for p in (10, 5) for lr in (2., 1.) for wd in (0.1, 0.)], scores)]
    assert search.best(runs(50, 70, 60, 60, 60, 60, 60, 60))['values'] == dict(
        num_tokens=10, lr=2., wd=0.)
    assert search.best(runs(50, 60, 70, 60, 60, 60, 70, 60))['values'] == dict(
        num_tokens=5, lr=1., wd=0.1)
    assert search.best(runs(50, 60, 70, 70, 60, 60, 70, 60))['values'] == dict(
        num_tokens=5, lr=1., wd=0.1)
    assert search.best(runs(50, 60, 70, 70, 60, 60, 60, 60))['values'] == dict(
        num_tokens=10, lr=1., wd=0.1)
