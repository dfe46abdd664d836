"""Jobs killed and restarted: a training process killed with SIGKILL and resumed ends exactly
where an uninterrupted run ends (prompt dropout, augmentation and data order included), and a
save that dies half-way leaves the previous checkpoint resumable."""
import glob
import os
import os.path as osp
import signal
import uuid

import pytest
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmvpt.apis import add_training_hooks, prepare_config
from mmvpt.utils import atomic_io, load_local_checkpoint

from tests.conftest import DEMO_CONFIG, data_options, pretrained_line, run_tool
from tests.helpers.runners import assert_same_training_state

CVPT = "dict(type='mmvpt.CVPT', num_tokens=4)"  # prompt dropout 0.1, per sample (defaults)
E2VPT = "dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4)"  # dropout 0.1
PRUNING = ("dict(type='mmvpt.PromptPruningHook', prune_after=2, token_fraction=0.5, "
           "segment_fraction=0.5)")
EPOCHS, ITERS_PER_EPOCH = 4, 4  # 64 training images, batch 16


def write_config(path, prompt, backbone, hooks='', seed=0, workers=0, kill_at=None):
    """The demo's tiny ViT, frozen under ``prompt``, with random flips, validation after
    every epoch and a checkpoint (the last one kept) after every epoch."""
    hooks = ["dict(type='mmvpt.TunedCheckpointHook')"] + ([hooks] if hooks else []) + (
        [f"dict(type='KillHook', at_iter={kill_at})"] if kill_at else [])
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        f"model = dict(backbone=dict(frozen=True, prompt={prompt}))\n"
        + pretrained_line(backbone) +
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.kill_hook'])\n"
        f"custom_hooks = [{', '.join(hooks)}]\n"
        "train_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)),\n"
        "                  dict(type='RandomFlip', prob=0.5, direction='horizontal'),\n"
        "                  dict(type='PackInputs')]\n"
        f"train_dataloader = dict(batch_size=16, num_workers={workers}, persistent_workers=False,\n"
        "                        dataset=dict(pipeline=train_pipeline))\n"
        f"train_cfg = dict(max_epochs={EPOCHS}, val_interval=1)\n"
        "default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))\n"
        f"randomness = dict(seed={seed})\n")
    return str(path)


def train(config, work_dir, data_root, *args, check=True):
    return run_tool('train.py', config, '--work-dir', str(work_dir), *args, '--cfg-options',
                    *data_options(data_root), check=check)


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


@pytest.mark.tools
@pytest.mark.parametrize('kill_at', [2 * ITERS_PER_EPOCH - 2, 3 * ITERS_PER_EPOCH - 1],
                         ids=['stage1', 'after-pruning'])
def test_e2vpt_killed_and_resumed_equals_uninterrupted(tiny_vtab, demo_backbone, tmp_path,
                                                       uninterrupted_e2vpt, kill_at):
    config = write_config(tmp_path / 'kill.py', E2VPT, demo_backbone, PRUNING, kill_at=kill_at)
    work_dir = tmp_path / 'work'
    proc = train(config, work_dir, tiny_vtab, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    epoch = kill_at // ITERS_PER_EPOCH  # the last finished epoch
    assert last_checkpoint(work_dir) == osp.join(str(work_dir), f'epoch_{epoch}.pth')
    resume_config = write_config(tmp_path / 'resume.py', E2VPT, demo_backbone, PRUNING)
    log = train(resume_config, work_dir, tiny_vtab, '--resume').stdout
    assert f'resumed epoch: {epoch}' in log and 'no random state' not in log
    got = load_local_checkpoint(osp.join(work_dir, f'epoch_{EPOCHS}.pth'))
    assert_same_training_state(got, uninterrupted_e2vpt)
    assert got['prompt_pruning']['pruned']


@pytest.fixture(scope='module')
def uninterrupted_e2vpt(tiny_vtab, demo_backbone, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2vpt')
    train(write_config(tmp / 'run.py', E2VPT, demo_backbone, PRUNING), tmp / 'work', tiny_vtab)
    ckpt = load_local_checkpoint(str(tmp / 'work' / f'epoch_{EPOCHS}.pth'))
    assert len(ckpt['rng_state']) == 1  # one rank
    return ckpt


@pytest.mark.tools
def test_cvpt_killed_and_resumed_with_workers_and_no_seed_equals_uninterrupted(
        tiny_vtab, demo_backbone, tmp_path):
    # No seed in the config: the resumed run must take the interrupted run's seed for its
    # (already built) sampler and data workers, or the data order changes.
    work_dir = tmp_path / 'work'
    kill = write_config(tmp_path / 'kill.py', CVPT, demo_backbone, seed=None, workers=2,
                        kill_at=ITERS_PER_EPOCH + 3)
    assert train(kill, work_dir, tiny_vtab, check=False).returncode == -signal.SIGKILL
    seed = load_local_checkpoint(last_checkpoint(work_dir))['meta']['seed']
    train(write_config(tmp_path / 'resume.py', CVPT, demo_backbone, seed=None, workers=2),
          work_dir, tiny_vtab, '--resume')
    # The uninterrupted run, with the seed the interrupted one drew.
    train(write_config(tmp_path / 'run.py', CVPT, demo_backbone, seed=seed, workers=2),
          tmp_path / 'uninterrupted', tiny_vtab)
    assert_same_training_state(
        load_local_checkpoint(str(work_dir / f'epoch_{EPOCHS}.pth')),
        load_local_checkpoint(str(tmp_path / 'uninterrupted' / f'epoch_{EPOCHS}.pth')))


@pytest.mark.tools
@pytest.mark.parametrize('prompt', [
    "dict(type='mmvpt.AdaptFormer', bottleneck=4)",  # its dropout draws random numbers
    "dict(type='mmvpt.LoRA', rank=2, targets=('q', 'v', 'fc2'), dropout=0.1)"],
    ids=['adaptformer', 'lora'])
def test_adapter_baselines_killed_and_resumed_equal_uninterrupted(tiny_vtab, demo_backbone,
                                                                  tmp_path, prompt):
    work_dir = tmp_path / 'work'
    kill = write_config(tmp_path / 'kill.py', prompt, demo_backbone,
                        kill_at=2 * ITERS_PER_EPOCH + 1)
    assert train(kill, work_dir, tiny_vtab, check=False).returncode == -signal.SIGKILL
    assert last_checkpoint(work_dir) == osp.join(str(work_dir), 'epoch_2.pth')
    run = write_config(tmp_path / 'run.py', prompt, demo_backbone)
    assert 'resumed epoch: 2' in train(run, work_dir, tiny_vtab, '--resume').stdout
    train(run, tmp_path / 'uninterrupted', tiny_vtab)
    resumed = load_local_checkpoint(str(work_dir / f'epoch_{EPOCHS}.pth'))
    assert_same_training_state(
        resumed, load_local_checkpoint(str(tmp_path / 'uninterrupted' / f'epoch_{EPOCHS}.pth')))
    assert {k.split('.')[0] for k in resumed['state_dict']} == {'backbone', 'head'}  # tuned only
    assert all(k.startswith(('backbone.prompt.', 'head.')) for k in resumed['state_dict'])


# -- atomic checkpoints --------------------------------------------------------------------
class HalfWriter:
    """A file whose write stores half of the data, then fails (a full disk, a kill)."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(data[:len(data) // 2])
        self.file.flush()
        raise OSError(28, 'No space left on device')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


class FailSavesFromEpoch(Hook):
    """Every file write fails half-way from the given epoch on."""

    def __init__(self, epoch, monkeypatch):
        self.epoch, self.monkeypatch = epoch, monkeypatch

    def before_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            real_fdopen = os.fdopen
            self.monkeypatch.setattr(atomic_io.os, 'fdopen',
                                     lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))


def make_runner(config, work_dir, data_root, **options):
    values = dict(zip([o.split('=')[0] for o in data_options(data_root)], [data_root] * 3))
    cfg = add_training_hooks(prepare_config(config, dict(values, **options), str(work_dir)))
    cfg.experiment_name = uuid.uuid4().hex  # own logger and message hub per runner
    return Runner.from_cfg(cfg)


def test_a_save_that_dies_half_way_leaves_the_previous_checkpoint_resumable(
        tiny_vtab, demo_backbone, tmp_path, monkeypatch):
    config = write_config(tmp_path / 'cfg.py', CVPT, demo_backbone)
    work_dir = tmp_path / 'work'
    runner = make_runner(config, work_dir, tiny_vtab, **{'train_cfg.max_epochs': 2})
    runner.register_hook(FailSavesFromEpoch(2, monkeypatch))
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    monkeypatch.undo()
    first = osp.join(str(work_dir), 'epoch_1.pth')
    # max_keep_ckpts=1: MMEngine deletes epoch_1 before writing epoch_2; ours only after.
    assert sorted(os.listdir(work_dir)) == sorted(
        ['epoch_1.pth', 'last_checkpoint', osp.basename(config), runner.timestamp])
    assert last_checkpoint(work_dir) == first
    assert load_local_checkpoint(first)['meta']['epoch'] == 1  # whole, readable
    # A killed save leaves its temporary file: the next run removes it.
    stale = work_dir / '.epoch_2.pth.abc123.partial'
    stale.write_bytes(b'half a checkpoint')
    resumed = make_runner(config, work_dir, tiny_vtab, resume=True, **{'train_cfg.max_epochs': 2})
    resumed.train()
    assert resumed.epoch == 2 and not stale.exists()
    assert last_checkpoint(work_dir) == osp.join(str(work_dir), 'epoch_2.pth')
    assert not osp.exists(first)  # pruned, now that epoch_2 is safely written
    assert not glob.glob(str(work_dir / '.*.partial'))


def test_train_tool_swaps_in_the_atomic_checkpoint_hook(tmp_path):
    config = tmp_path / 'plain.py'
    config.write_text(f"_base_ = [{DEMO_CONFIG!r}]\n"
                      "default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=2))\n")
    cfg = add_training_hooks(prepare_config(str(config)))
    hook = cfg.default_hooks.checkpoint
    assert (hook.type, hook.interval, hook.max_keep_ckpts) == ('mmvpt.CheckpointHook', 2, 1)
    assert cfg.custom_hooks[-1] == dict(type='mmvpt.ParameterReportHook')


def test_ranks_without_a_saved_state_resume_with_a_warning():
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from mmvpt.engine.hooks import CheckpointHook
    from mmvpt.engine.hooks.checkpoint_hook import get_rng_state
    loader = SimpleNamespace(sampler=SimpleNamespace(seed=5), worker_init_fn=None, num_workers=0,
                             persistent_workers=False)
    runner = SimpleNamespace(_resume=True, train_dataloader=loader)
    logger = MMLogger.get_instance(f'rng_{uuid.uuid4().hex}')
    messages = []
    # print_log(logger='current') logs to the newest logger
    logger.log = lambda level, message: messages.append(message)
    hook = CheckpointHook(interval=1)
    hook.after_load_checkpoint(runner, dict(meta=dict(seed=7)))  # a checkpoint without states
    assert hook._resumed_rng_state is None
    assert len(messages) == 1 and 'no random state for rank 0 (it has 0)' in messages[0]
    assert loader.sampler.seed == 7  # the interrupted run's data order all the same
    state = get_rng_state()
    hook.after_load_checkpoint(runner, dict(meta=dict(seed=7), rng_state=[state]))
    assert hook._resumed_rng_state is state and len(messages) == 1
