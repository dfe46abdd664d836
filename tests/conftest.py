"""Shared by every test folder: the demo config and its data and weights (fixtures), tools run
in a fresh process (``run_tool``), MMEngine's default scope kept per module, and the
``tools`` marker.

``tools`` marks the tests that start processes (tools/*.py, dist_train.sh / torchrun, shell
scripts, a fresh python) and the few that take many seconds in process (torch.compile, every
config built or run); ``python -m pytest tests -n 2 -m "not tools"`` runs the others in a couple
of minutes. A test without the marker that starts a python, a shell, torchrun or a script of
the repository fails, saying so (UnmarkedPopen)."""
import os
import os.path as osp
import shlex
import socket
import subprocess
import sys

import pytest
import torch

from tests.helpers import tiny_models

# Tiny models on 2 cores: one thread per test process avoids oversubscription with
# pytest-xdist's two workers.
torch.set_num_threads(1)

# The repository, the demo config and its tiny ViT (tests/helpers/tiny_models.py).
ROOT, DEMO_CONFIG, DEMO_ARCH = tiny_models.ROOT, tiny_models.DEMO_CONFIG, tiny_models.DEMO_ARCH


# -- the tools marker --------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'tools: starts processes (tools/ scripts, torchrun, shells, a fresh python) '
        'or runs for many seconds in process (torch.compile, every config); '
        '-m "not tools" runs the fast tests')


def starts_a_tool(args):
    """Whether a Popen command runs a python, a shell, torchrun or a file of the repository."""
    if isinstance(args, (str, bytes, os.PathLike)):  # a command line (shell=True) or a program
        args = os.fsdecode(args)
        try:
            args = shlex.split(args)
        except ValueError:
            args = [args]
    argv = [os.fsdecode(arg) for arg in args]
    if not argv:
        return False
    program = argv[0]
    name = osp.basename(program)
    return (program == sys.executable or name.startswith('python')
            or name in ('bash', 'sh', 'torchrun')
            or os.sep in program and osp.realpath(program).startswith(ROOT + os.sep))


_unmarked_test = None  # the test running without the tools marker, while it runs


class UnmarkedPopen(subprocess.Popen):
    """``subprocess.Popen`` while a test without the ``tools`` marker runs (fixtures
    included): refuses the processes of ``starts_a_tool``, so that ``-m "not tools"`` never
    starts one."""

    def __new__(cls, args, *more, **kwargs):
        if starts_a_tool(args):
            raise RuntimeError(f'{_unmarked_test} starts {args!r}: mark it @pytest.mark.tools '
                               '(or the module: pytestmark = pytest.mark.tools)')
        return super().__new__(cls)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _unmarked_test
    if item.get_closest_marker('tools') is not None:
        return (yield)
    popen, _unmarked_test = subprocess.Popen, item.nodeid
    subprocess.Popen = UnmarkedPopen
    try:
        return (yield)
    finally:
        subprocess.Popen, _unmarked_test = popen, None


# -- isolation ------------------------------------------------------------------------------------
@pytest.fixture(scope='module', autouse=True)
def default_scope_per_module():
    """MMEngine's default scope as the module found it, back after its tests: a scope one
    module sets (init_default_scope('mmseg')) reaches no other module's tests, whatever
    order pytest-xdist runs them in."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved


# -- processes -----------------------------------------------------------------------------------
def tool_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run_tool(*args, check=True, timeout=600):
    """Runs ``python tools/<args>`` (or a shell script under tools/) in a fresh process (in a
    test marked ``tools``)."""
    script = osp.join(ROOT, 'tools', args[0])
    runner = ['bash', script] if script.endswith('.sh') else [sys.executable, script]
    cmd = runner + list(args[1:])
    proc = subprocess.run(cmd, cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# -- the demo's data and weights -----------------------------------------------------------------
@pytest.fixture(scope='session')
def tiny_vtab(tmp_path_factory):
    """A 4-class task in the VTAB-1k folder format, small enough for seconds of training."""
    from mmvpt.testing import make_vtab_task
    root = tmp_path_factory.mktemp('vtab')
    return make_vtab_task(str(root), 'synthetic', num_classes=4, num_train=64, num_val=32,
                          num_test=32, size=32)


def data_options(task_dir):
    """--cfg-options values that point the demo config at ``task_dir``."""
    return [f'{split}_dataloader.dataset.data_root={task_dir}'
            for split in ('train', 'val', 'test')]


@pytest.fixture(scope='session')
def demo_backbone(tmp_path_factory):
    """Random weights of the demo's tiny ViT (DEMO_ARCH) in timm's checkpoint format: the
    'pretrained' backbone under the tuned-only checkpoints of the tests."""
    from mmvpt.testing import write_random_vit
    path = tmp_path_factory.mktemp('pretrained') / 'vit_tiny.pth'
    return write_random_vit(path, img_size=32, **DEMO_ARCH)


def pretrained_line(checkpoint):
    """Config line that gives the backbone a pretrained init_cfg."""
    return f"model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint={checkpoint!r})\n"
