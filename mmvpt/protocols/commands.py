"""A protocol's run as the command of a launcher: ``local`` (python tools/...), ``dist``
(torchrun through tools/dist_*.sh), ``slurm`` (srun through tools/slurm_*.sh), and Slurm job
arrays, one array per wave of a stage's independent runs."""
import dataclasses
import os
import os.path as osp
import shlex
import subprocess
import sys

from mmvpt.utils.protocol_results import ProtocolError, newest_log

TOOLS_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools')
LAUNCHERS = ('local', 'dist', 'slurm')


class Unquoted(str):
    """A command argument that is shell syntax (``$(cat ...)``, ``${LR}``), printed as is: a
    value a stage before has not chosen yet, in --print-only mode."""


@dataclasses.dataclass
class Launch:
    """How the runs are started (the command line's launcher options)."""
    launcher: str = 'local'
    gpus: int = 1
    partition: str = None
    job_name: str = None
    array: bool = False          # Slurm: one job array per wave of independent runs
    array_limit: int = None      # at most this many array tasks at once
    cfg_options: tuple = ()      # the user's --cfg-options, for every run
    print_only: bool = False


# The tools/ script of each kind of run, and its torchrun / srun wrappers.
SCRIPTS = dict(train=('train.py', 'dist_train.sh', 'slurm_train.sh'),
               test=('test.py', 'dist_test.sh', 'slurm_test.sh'),
               score=('analysis/prompt_importance.py', None, None))


def command(launch, run, job_name):
    """(argv, extra environment) of a run (:class:`~mmvpt.protocols.stages.Run`)."""
    script, dist_script, slurm_script = SCRIPTS[run.kind]
    positional = [run.config] + ([run.checkpoint] if run.kind in ('test', 'score') else [])
    extra = ['--out', run.out] if run.kind == 'score' else []
    if not (run.kind == 'train' and launch.launcher == 'slurm'):  # slurm_train.sh takes it
        extra += ['--work-dir', run.work_dir]
    if run.kind == 'train' and not run.validate:
        extra.append('--no-validate')
    extra += ['--cfg-options', *run.options, *launch.cfg_options]
    if launch.launcher == 'local':
        return [sys.executable, osp.join(TOOLS_DIR, script), *positional, *extra], {}
    if launch.launcher == 'dist':
        if dist_script is None:
            return ['bash', osp.join(TOOLS_DIR, 'torchrun.sh'), str(launch.gpus), script,
                    *positional, *extra], {}
        return ['bash', osp.join(TOOLS_DIR, dist_script), run.config, *positional[1:],
                str(launch.gpus), *extra], {}
    env = slurm_env(launch)
    if slurm_script is None:
        return ['bash', osp.join(TOOLS_DIR, 'srun.sh'), launch.partition, job_name, script,
                *positional, *extra], env
    if run.kind == 'train':
        return ['bash', osp.join(TOOLS_DIR, slurm_script), launch.partition, job_name,
                run.config, run.work_dir, *extra], env
    return ['bash', osp.join(TOOLS_DIR, slurm_script), launch.partition, job_name,
            *positional, *extra], env


def slurm_env(launch):
    """slurm_*.sh read the process count from GPUS; GPUS_PER_NODE (default 8 there) must not
    exceed it on a single node, unless the user set it."""
    env = {'GPUS': str(launch.gpus)}
    if 'GPUS_PER_NODE' not in os.environ:
        env['GPUS_PER_NODE'] = str(min(launch.gpus, 8))
    return env


def shown_tool(path):
    """A tools/ script prints relative to the current directory when it lies under it."""
    relative = osp.relpath(path)
    return path if relative.startswith('..') else relative


def format_command(argv, env):
    words = [f'{key}={value}' for key, value in env.items()]
    for i, word in enumerate(argv):
        if i == 0 and word == sys.executable:
            words.append('python')
        elif isinstance(word, Unquoted):
            words.append(word)
        else:
            words.append(shlex.quote(shown_tool(word) if word.startswith(TOOLS_DIR) else word))
    return ' '.join(words)


def execute(argv, env, work_dir, what):
    """Runs one command, its output going to ours; a failure names the command and dir."""
    print(f'[protocol] {what}: {format_command(argv, env)}', flush=True)
    os.makedirs(work_dir, exist_ok=True)
    proc = subprocess.run(argv, env={**os.environ, **env})
    if proc.returncode != 0:
        raise ProtocolError(f'{what} failed (exit {proc.returncode}); work dir {work_dir}\n'
                            f'  command: {format_command(argv, env)}\n'
                            f'  its log: {newest_log(work_dir) or "none written"}')


def array_script(launch, commands, job_name):
    """A Slurm batch script that runs ``commands[$SLURM_ARRAY_TASK_ID]``, each a
    tools/slurm_*.sh command, whose srun then runs in the task's allocation."""
    env = slurm_env(launch)
    lines = ['#!/usr/bin/env bash', f'#SBATCH --job-name={job_name}',
             f'#SBATCH --partition={launch.partition}', f'#SBATCH --ntasks={launch.gpus}',
             f'#SBATCH --gres=gpu:{os.environ.get("GPUS_PER_NODE", env.get("GPUS_PER_NODE"))}',
             f'#SBATCH --output={job_name}-%A_%a.out', 'set -e',
             f'cd {shlex.quote(os.getcwd())}', 'case "$SLURM_ARRAY_TASK_ID" in']
    for index, (argv, env) in enumerate(commands):
        lines.append(f'{index}) {format_command(argv, env)} ;;')
    lines += ['*) echo "no run $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', 'esac']
    return '\n'.join(lines) + '\n'


def sbatch_command(launch, script, count):
    limit = f'%{launch.array_limit}' if launch.array_limit else ''
    return ['sbatch', '--wait', f'--array=0-{count - 1}{limit}', script]
