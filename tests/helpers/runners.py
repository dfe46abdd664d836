"""MMEngine runners in the test process, on the demo config (the tiny ViT of DEMO_ARCH) and a
task folder: a config with custom hooks and a 2 + 2 epoch schedule, and its runner; two
checkpoints' training states compared bit for bit."""
import uuid

import torch
from mmengine.runner import Runner

from mmvpt.apis import prepare_config

from tests.conftest import DEMO_CONFIG, data_options

E2VPT = "dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4, dropout=0.)"


def write_config(tmp_path, prompt, hooks, extra=''):
    """The demo config, frozen under ``prompt``, with ``hooks`` (SnapshotAfterPruningHook
    importable), a warm-up epoch then cosine to epoch 2 (the rewind after pruning restarts it),
    4 epochs, a checkpoint per epoch, seed 0."""
    path = tmp_path / f'cfg_{uuid.uuid4().hex[:6]}.py'
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        f"model = dict(backbone=dict(frozen=True, prompt={prompt}))\n"
        f"custom_imports = dict(imports=['mmvpt', 'tests.helpers.snapshot_hook'])\n"
        f"custom_hooks = [{hooks}]\n"
        "param_scheduler = [\n"
        "    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1),\n"
        "    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=2)]\n"
        "train_cfg = dict(max_epochs=4, val_interval=100)\n"
        "default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=10))\n"
        "randomness = dict(seed=0, deterministic=True)\n" + extra)
    return str(path)


def make_runner(config, work_dir, data_root, **options):
    """The runner of ``config`` on the task folder ``data_root``, ``options`` as --cfg-options."""
    cfg = prepare_config(config, dict(zip([o.split('=')[0] for o in data_options(data_root)],
                                          [data_root] * 3), **options), str(work_dir))
    cfg.experiment_name = uuid.uuid4().hex  # own logger and message hub per runner
    return Runner.from_cfg(cfg)


def assert_equal(got, expected, where=''):
    """Nested dicts / lists / tensors equal, tensors bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_equal(got[key], expected[key], f'{where}.{key}')
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_equal(g, e, f'{where}[{i}]')
    else:
        assert got == expected, where


def assert_same_training_state(got, expected):
    """Tuned tensors, pruning state and optimizer state of two checkpoints, bit for bit."""
    for key in ('state_dict', 'optimizer', 'prompt_pruning'):
        assert_equal(got.get(key), expected.get(key), key)
