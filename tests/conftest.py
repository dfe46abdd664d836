import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

# Tiny models on 2 cores: one thread per test process avoids oversubscription with
# pytest-xdist's two workers.
torch.set_num_threads(1)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs/demo/vit-tiny_synthetic.py')


def tool_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run_tool(*args, check=True, timeout=600):
    """Runs ``python tools/<args>`` (or a shell script under tools/) in a fresh process."""
    script = osp.join(ROOT, 'tools', args[0])
    cmd = (['bash', script] if script.endswith('.sh') else [sys.executable, script]) + list(args[1:])
    proc = subprocess.run(cmd, cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc


@pytest.fixture(scope='session')
def tiny_vtab(tmp_path_factory):
    """A 4-class task in the VTAB-1k folder format, small enough for seconds of training."""
    from mmvpt.testing import make_vtab_task
    root = tmp_path_factory.mktemp('vtab')
    return make_vtab_task(str(root), 'synthetic', num_classes=4, num_train=64, num_val=32,
                          num_test=32, size=32)


def data_options(task_dir):
    """--cfg-options values that point the demo config at ``task_dir``."""
    return [f'{split}_dataloader.dataset.data_root={task_dir}' for split in ('train', 'val', 'test')]


# The tiny ViT of configs/demo/vit-tiny_synthetic.py.
DEMO_ARCH = dict(patch_size=8, embed_dim=64, depth=4, num_heads=4)


@pytest.fixture(scope='session')
def demo_backbone(tmp_path_factory):
    """Random weights of the demo's tiny ViT in timm's checkpoint format: the 'pretrained'
    backbone under the tuned-only checkpoints of the tests."""
    from mmvpt.testing import write_random_vit
    path = tmp_path_factory.mktemp('pretrained') / 'vit_tiny.pth'
    return write_random_vit(path, img_size=32, **DEMO_ARCH)


def pretrained_line(checkpoint):
    """Config line that gives the backbone a pretrained init_cfg."""
    return f"model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint={checkpoint!r})\n"
