"""tools/train.py and tools/test.py on a tiny classification config: a real train, resume
and test cycle, checkpoint loading under torch >= 2.6, and the errors for bad input."""
import glob
import os.path as osp
import pickle

import pytest
import torch
from mmengine.config import Config

from mmvpt.apis import ConfigError, adapt_to_device, init_distributed, prepare_config
from mmvpt.utils import load_local_checkpoint

from tests.conftest import DEMO_CONFIG, data_options, run_tool

FAST = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=3', 'randomness.deterministic=True']


@pytest.fixture(scope='module')
def trained(tiny_vtab, tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('train'))
    run_tool('train.py', DEMO_CONFIG, '--work-dir', work_dir, '--cfg-options',
             *data_options(tiny_vtab), *FAST)
    return work_dir


@pytest.mark.tools
def test_train_writes_checkpoints_and_logs(trained):
    assert osp.isfile(osp.join(trained, 'epoch_1.pth'))
    assert osp.isfile(osp.join(trained, 'epoch_2.pth'))
    ckpt = load_local_checkpoint(osp.join(trained, 'epoch_2.pth'))
    assert ckpt['meta']['epoch'] == 2
    assert 'message_hub' in ckpt and 'optimizer' in ckpt


@pytest.mark.tools
def test_checkpoints_of_plain_mmengine_need_our_loader_under_new_torch(trained, tmp_path):
    # What MMEngine writes without mmvpt imported (its HistoryBuffer pickles bound methods
    # through builtins.getattr): torch's weights-only default refuses it, our loader reads it.
    import copyreg

    from mmengine.logging import HistoryBuffer
    major, minor = (int(v) for v in torch.__version__.split('.')[:2])
    if (major, minor) < (2, 6):
        pytest.skip('torch < 2.6 loads everything')
    checkpoint = load_local_checkpoint(osp.join(trained, 'epoch_2.pth'))
    plain = str(tmp_path / 'plain_mmengine.pth')
    reducer = copyreg.dispatch_table.pop(HistoryBuffer)  # mmvpt's by-value pickling, undone
    try:
        torch.save(checkpoint, plain)
    finally:
        copyreg.pickle(HistoryBuffer, reducer)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(plain)
    state = load_local_checkpoint(plain)['state_dict']
    assert state['head.fc.weight'].shape == (4, 64)
    # What mmvpt writes, torch reads as it is.
    assert torch.load(osp.join(trained, 'epoch_2.pth'))['meta']['epoch'] == 2


@pytest.mark.tools
def test_resume_continues_from_checkpoint(trained, tiny_vtab, tmp_path):
    work_dir = str(tmp_path)
    proc = run_tool('train.py', DEMO_CONFIG, '--work-dir', work_dir,
                    '--resume', osp.join(trained, 'epoch_1.pth'), '--cfg-options',
                    *data_options(tiny_vtab), *FAST)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1' in log
    # Only epoch 2 ran here.
    assert not osp.exists(osp.join(work_dir, 'epoch_1.pth'))
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))


@pytest.mark.tools
def test_auto_resume_from_work_dir(trained, tiny_vtab):
    proc = run_tool('train.py', DEMO_CONFIG, '--work-dir', trained, '--resume', '--cfg-options',
                    *data_options(tiny_vtab), *FAST[1:], 'train_cfg.max_epochs=3')
    assert 'resumed epoch: 2' in proc.stdout + proc.stderr
    assert osp.isfile(osp.join(trained, 'epoch_3.pth'))


@pytest.mark.tools
@pytest.mark.parametrize('tta', [False, True])
def test_test_tool_evaluates_checkpoint(trained, tiny_vtab, tmp_path, tta):
    ckpt = osp.join(trained, 'epoch_2.pth')
    out = str(tmp_path / 'preds.pkl')
    args = ['test.py', DEMO_CONFIG, ckpt, '--work-dir', str(tmp_path), '--out', out,
            '--cfg-options', *data_options(tiny_vtab)]
    proc = run_tool(*(args + (['--tta'] if tta else [])))
    assert 'accuracy/top1' in proc.stdout + proc.stderr
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 32
    # The reported accuracy is the one the dumped scores give (with TTA, mmpretrain keeps the
    # first view's pred_label but averages pred_score, which Accuracy uses).
    correct = sum(int(p['pred_score'].argmax().item() == p['gt_label'].item()) for p in preds)
    assert f'accuracy/top1: {100.0 * correct / 32:.4f}' in proc.stdout + proc.stderr


@pytest.mark.tools
def test_unknown_mmvpt_type_names_the_config_path(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.backbone\.type='mmvpt\.NoSuchViT'"):
        prepare_config(DEMO_CONFIG, {'model.backbone.type': 'mmvpt.NoSuchViT'})
    proc = run_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                    'model.backbone.type=mmvpt.NoSuchViT', check=False)
    assert proc.returncode != 0
    assert "model.backbone.type='mmvpt.NoSuchViT'" in proc.stderr


@pytest.mark.tools
def test_missing_files_fail_naming_them(tmp_path, tiny_vtab):
    proc = run_tool('test.py', DEMO_CONFIG, str(tmp_path / 'nope.pth'), check=False)
    assert proc.returncode != 0 and 'nope.pth' in proc.stderr and 'does not exist' in proc.stderr
    proc = run_tool('train.py', DEMO_CONFIG, '--resume', str(tmp_path / 'gone.pth'), check=False)
    assert proc.returncode != 0 and 'gone.pth' in proc.stderr
    proc = run_tool('train.py', str(tmp_path / 'no_config.py'), check=False)
    assert proc.returncode != 0 and 'no_config.py' in proc.stderr
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_local_checkpoint(str(tmp_path / 'missing.pth'))


def test_launcher_that_cannot_start_says_why(monkeypatch):
    for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match='launcher "pytorch" cannot start: RANK'):
        init_distributed('pytorch')
    monkeypatch.delenv('SLURM_PROCID', raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='launcher "slurm" cannot start'):
            init_distributed('slurm')
    with pytest.raises(RuntimeError, match='unknown launcher'):
        init_distributed('ssh')


def test_cpu_adaptation_replaces_syncbn_and_sets_gloo():
    cfg = Config(dict(model=dict(backbone=dict(norm_cfg=dict(type='SyncBN')),
                                 heads=[dict(norm_cfg=dict(type='SyncBN', requires_grad=True))])))
    adapt_to_device(cfg, 'pytorch')
    if torch.cuda.is_available():
        assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
        return
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.model.heads[0].norm_cfg == dict(type='BN', requires_grad=True)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'


def test_non_openmmlab_scope_is_refused(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("default_scope = 'mmdet'\n")
    with pytest.raises(ConfigError, match="default_scope='mmdet'"):
        prepare_config(str(path))


@pytest.mark.tools
def test_train_logs_the_parameter_report(trained):
    logs = glob.glob(osp.join(trained, '*', '*.log'))
    text = ''.join(open(path).read() for path in logs)
    # The demo config trains everything (frozen=False): tuned == total.
    assert 'tuned parameters: 213,828 of 213,828 (100.0000%)' in text


@pytest.mark.tools
def test_demo_prompt_tunes_far_above_chance(tmp_path):
    proc = run_tool('demo.py', '--work-dir', str(tmp_path))
    line = next(t for t in proc.stdout.splitlines() if 'CVPT test top-1 accuracy' in t)
    accuracy = float(line.split('accuracy: ')[1].split('%')[0])
    assert accuracy >= 75.0, line  # chance is 25%
    assert 'tuned parameters: 2,308 of 215,876' in proc.stdout
    # the terminal gets a line per stage and the summary; MMEngine's log goes to demo.log
    log_path = tmp_path / 'demo.log'
    lines = proc.stdout.splitlines()
    assert len(lines) <= 15, proc.stdout
    assert lines[0] == f'[demo] a line per stage here; the full log in {log_path}'
    assert lines[-1].startswith('[demo] done in ') and lines[-1].endswith(f' {log_path}')
    assert 'Epoch(train)' not in proc.stdout + proc.stderr
    log = log_path.read_text()
    assert log.count('Epoch(train)') > 50 and len(log.splitlines()) > 500
    assert line in log and '[demo] stage 3: e2vpt on the frozen backbone' in log
