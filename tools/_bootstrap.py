"""Starts a tool with a python that has mmvpt's dependencies, before the tool imports them.

The python tools import this first (``import tools._bootstrap``), so that
``python tools/train.py`` works in any shell:

- the running python finds torch, mmengine, mmcv and timm: nothing happens, so a user's own
  environment (a cluster install) is never replaced;
- else, when mmvpt's environment is built, the tool starts again with that environment's
  python and the same arguments. Where it is, is ``tools/env.sh --locate``'s answer: env.sh
  alone knows the hash that names it;
- else one line on stderr says how to build or activate it, and the tool exits with status 1.

tools/find_python.sh does the same for the shell scripts. Standard library only: this runs
before anything that needs the environment.
"""
import importlib.util
import os
import subprocess
import sys

REQUIRED_MODULES = ('torch', 'mmengine', 'mmcv', 'timm')  # the list of tools/find_python.sh
TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS_DIR)
HOW_TO_GET_IT = "run 'bash tools/env.sh' (builds it, ~20 min) or 'source tools/env.sh'"


def missing_modules():
    """The required modules this python cannot import; found without importing them, which
    would cost seconds on every start."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken module already in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def locate_env():
    """mmvpt's environment if it is built (complete), else None; builds nothing."""
    try:
        proc = subprocess.run(['bash', os.path.join(TOOLS_DIR, 'env.sh'), '--locate'],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True)
    except OSError:  # no bash
        return None
    env = proc.stdout.strip()
    return env if proc.returncode == 0 and env else None


def fail(message):
    """One line, no traceback: SystemExit prints none."""
    sys.stderr.write(f'mmvpt: {message}\n')
    sys.exit(1)


def running_a_tool():
    """Whether the program is one of tools/ (re-executable with its argv), not a caller that
    imported one."""
    main_file = getattr(sys.modules.get('__main__'), '__file__', None)
    return bool(main_file) and os.path.realpath(main_file).startswith(
        os.path.realpath(TOOLS_DIR) + os.sep)


def restart_in(env):
    """Runs this tool again with ``env``'s python, set up as ``source tools/env.sh`` would:
    the tool's own subprocesses (protocol.py's runs, torchrun's workers) then find the same
    environment, and the repository is importable (custom_imports of mmvpt, tests.helpers)."""
    python = os.path.join(env, 'bin', 'python')
    os.environ.update(
        MMVPT_ENV=env, VIRTUAL_ENV=env,
        PATH=os.pathsep.join(filter(None, [os.path.join(env, 'bin'), os.environ.get('PATH')])),
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(python, [python] + sys.argv)


def use_a_python_with_torch():
    missing = missing_modules()
    if not missing:
        return
    problem = f'{sys.executable} cannot import {", ".join(missing)}'
    env = locate_env()
    if env is None:
        given = f' (MMVPT_ENV={os.environ["MMVPT_ENV"]})' if os.environ.get('MMVPT_ENV') else ''
        fail(f"{problem}, and mmvpt's environment{given} is not built: {HOW_TO_GET_IT}")
    if os.path.realpath(sys.prefix) == os.path.realpath(env):
        # Already restarted into it (or started there): starting again would loop.
        fail(f"{problem}, which is mmvpt's environment {env}: it is broken; rebuild it with "
             f"'rm {env}/.complete && bash tools/env.sh'")
    if not os.access(os.path.join(env, 'bin', 'python'), os.X_OK):
        fail(f"{problem}, and mmvpt's environment {env} has no bin/python; rebuild it with "
             f"'rm {env}/.complete && bash tools/env.sh'")
    if not running_a_tool():
        fail(f"{problem}; mmvpt's environment is {env}: 'source tools/env.sh' activates it")
    restart_in(env)


use_a_python_with_torch()
