"""The tools start in any shell, as the README runs them (`python tools/train.py`,
`bash tools/dist_train.sh`): a python without torch hands over to mmvpt's built environment
(`tools/env.sh --locate`), a python with torch is kept, and without either one line on stderr
says how to get the environment."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.conftest import DEMO_CONFIG, ROOT, data_options, free_port

pytestmark = pytest.mark.tools

NOT_BUILT = ("mmvpt's environment (MMVPT_ENV=/nonexistent) is not built: "
             "run 'bash tools/env.sh' (builds it, ~20 min) or 'source tools/env.sh'")


def write_script(path, text):
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope='module')
def torchless_bin(tmp_path_factory):
    """A folder whose `python` / `python3` cannot import torch for sure: the base interpreter
    (this one's, outside any virtualenv) with -S, i.e. without site-packages."""
    bin_dir = tmp_path_factory.mktemp('torchless_bin')
    base = getattr(sys, '_base_executable', None) or sys.executable
    for name in ('python', 'python3'):
        write_script(bin_dir / name, f'#!/bin/sh\nexec "{base}" -S "$@"\n')
    return str(bin_dir)


@pytest.fixture(scope='module')
def built_env(tmp_path_factory):
    """mmvpt's environment as tools/env.sh leaves it: the one these tests run in."""
    if osp.isfile(osp.join(sys.prefix, '.complete')):
        return sys.prefix
    # Tests run from another install (a cluster's): what the lookup needs, a complete marker
    # and a bin/python, here this interpreter.
    env = tmp_path_factory.mktemp('mmvpt_env')
    (env / 'bin').mkdir()
    write_script(env / 'bin' / 'python', f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (env / '.complete').touch()
    return str(env)


@pytest.fixture
def fake_srun(tmp_path):
    """A folder with an `srun` that prints its command line instead of starting tasks."""
    bin_dir = tmp_path / 'srun_bin'
    bin_dir.mkdir()
    write_script(bin_dir / 'srun', '#!/bin/sh\necho "srun $*"\n')
    return str(bin_dir)


def fresh_shell_env(python_dir, mmvpt_env, extra_path=()):
    """The environment of a new shell with python_dir first on PATH: no virtualenv activated
    (neither VIRTUAL_ENV, PYTHONPATH nor the tests' own bin folder), MMVPT_ENV as given."""
    own_bin = osp.realpath(osp.dirname(sys.executable))
    path = [d for d in os.environ.get('PATH', '').split(os.pathsep)
            if d and osp.realpath(d) != own_bin]
    env = {key: value for key, value in os.environ.items()
           if key not in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME', 'MMVPT_ENV')}
    env.update(PATH=os.pathsep.join([python_dir, *extra_path, *path]), MMVPT_ENV=mmvpt_env)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run(command, env, check=True):
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(command)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc


def one_epoch(task_dir, work_dir):
    return ['--work-dir', str(work_dir), '--no-validate', '--cfg-options',
            *data_options(task_dir), 'train_cfg.max_epochs=1']


def test_locate_prints_a_complete_env_and_builds_nothing(built_env, tmp_path):
    env = dict(os.environ, MMVPT_ENV=built_env)
    proc = run(['bash', 'tools/env.sh', '--locate'], env)
    assert proc.stdout == built_env + '\n'
    absent = tmp_path / 'absent_env'
    proc = run(['bash', 'tools/env.sh', '--locate'], dict(env, MMVPT_ENV=str(absent)), check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, '', '')
    assert os.listdir(tmp_path) == []  # no environment, no lock, no log
    (absent / 'bin').mkdir(parents=True)  # half built: no .complete
    proc = run(['bash', 'tools/env.sh', '--locate'], dict(env, MMVPT_ENV=str(absent)), check=False)
    assert (proc.returncode, proc.stdout) == (1, '')


def test_tools_use_the_built_env_when_python_has_no_torch(torchless_bin, built_env, tiny_vtab,
                                                          tmp_path, fake_srun):
    env = fresh_shell_env(torchless_bin, built_env)
    # The premise: this shell's python cannot import torch.
    assert run(['python', '-c', 'import torch'], env, check=False).returncode != 0

    run(['python', 'tools/train.py', DEMO_CONFIG, *one_epoch(tiny_vtab, tmp_path / 'train')], env)
    checkpoint = str(tmp_path / 'train' / 'epoch_1.pth')
    assert osp.isfile(checkpoint)
    proc = run(['python', 'tools/test.py', DEMO_CONFIG, checkpoint, '--work-dir',
                str(tmp_path / 'test'), '--cfg-options', *data_options(tiny_vtab)], env)
    assert 'accuracy/top1' in proc.stdout + proc.stderr

    env['PORT'] = str(free_port())
    run(['bash', 'tools/dist_train.sh', DEMO_CONFIG, '1',
         *one_epoch(tiny_vtab, tmp_path / 'dist')], env)
    assert osp.isfile(tmp_path / 'dist' / 'epoch_1.pth')

    # srun gets the environment's python too (the fake one prints its command line).
    env = fresh_shell_env(torchless_bin, built_env, extra_path=[fake_srun])
    out = run(['bash', 'tools/slurm_train.sh', 'part', 'job', 'cfg.py'], env).stdout
    assert f' {osp.join(built_env, "bin", "python")} -u {ROOT}/tools/train.py cfg.py' in out


@pytest.mark.parametrize('command', [
    ['python', 'tools/train.py', DEMO_CONFIG],
    ['python', 'tools/test.py', DEMO_CONFIG, 'epoch_1.pth'],
    ['python', 'tools/protocol.py', DEMO_CONFIG],
    ['python', 'tools/demo.py'],
    ['python', 'tools/analysis/report.py', '.'],
    ['python', 'tools/analysis/benchmark.py'],
    ['bash', 'tools/dist_train.sh', DEMO_CONFIG, '2'],
    ['bash', 'tools/dist_test.sh', DEMO_CONFIG, 'epoch_1.pth', '2'],
    ['bash', 'tools/slurm_train.sh', 'part', 'job', DEMO_CONFIG],
    ['bash', 'tools/slurm_test.sh', 'part', 'job', DEMO_CONFIG, 'epoch_1.pth'],
], ids=lambda command: command[1].replace('tools/', ''))
def test_without_torch_or_the_env_one_line_says_how_to_get_it(command, torchless_bin):
    proc = run(command, fresh_shell_env(torchless_bin, '/nonexistent'), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ''
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('mmvpt: '), lines[0]
    assert 'cannot import torch, mmengine, mmcv, timm, and ' in lines[0]
    assert lines[0].endswith(NOT_BUILT), lines[0]


def test_a_python_with_torch_is_kept(tiny_vtab, tmp_path, fake_srun):
    # The tests' own python first on PATH, as in a user's working environment; with MMVPT_ENV
    # pointing nowhere, any attempt to hand over to mmvpt's environment would fail.
    env = fresh_shell_env(osp.dirname(sys.executable), '/nonexistent')
    run(['python', 'tools/train.py', DEMO_CONFIG, *one_epoch(tiny_vtab, tmp_path / 'train')], env)
    assert osp.isfile(tmp_path / 'train' / 'epoch_1.pth')

    env = fresh_shell_env(osp.dirname(sys.executable), '/nonexistent', extra_path=[fake_srun])
    out = run(['bash', 'tools/slurm_train.sh', 'part', 'job', 'cfg.py'], env).stdout
    assert f' python -u {ROOT}/tools/train.py cfg.py' in out
    out = run(['bash', 'tools/slurm_train.sh', 'part', 'job', 'cfg.py'],
              dict(env, PYTHON=sys.executable)).stdout
    assert f' {sys.executable} -u {ROOT}/tools/train.py cfg.py' in out
