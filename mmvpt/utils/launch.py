"""Configs made ready for MMEngine's runner, as ``tools/train.py`` and ``tools/test.py``
prepare them: pick the host library from the config, check mmvpt types up front, fit the
config to the machine (CPU or GPU, single process or distributed), add test-time
augmentation or a test output, and start the process group."""
import argparse
import copy
import importlib
import logging
import os
import os.path as osp
import subprocess
import sys
import time
import traceback

import torch
from mmengine.config import Config

from mmvpt.registry import ALL_REGISTRIES, MODELS
from mmvpt.utils.checkpoint_loading import register_checkpoint_loader

# default_scope -> the module that must be imported for its registries to fill.
SUPPORTED_HOSTS = {'mmpretrain': 'mmpretrain', 'mmseg': 'mmseg'}

# Norm layers that need one process per GPU; on CPU they become plain BN.
_SYNC_BN_TYPES = {'SyncBN', 'MMSyncBN', 'mmseg.SyncBN', 'mmpretrain.SyncBN'}


class ConfigError(ValueError):
    """A config value that cannot work, named with its place in the config."""


# What a user's input raises (a config value, an option, a missing or unfitting file): such an
# error ends a tool with one line, not a traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


# Set by tools/_torchrun.py (tools/dist_train.sh, dist_test.sh) for its workers: the file where
# the first rank that meets a user error leaves its line, for the launcher to print last.
ERROR_FILE_VAR = 'MMVPT_ERROR_FILE'


# How long a rank other than 0 waits for rank 0's line before it reports its own (seconds).
RANK0_GRACE_S = 5.


class _UsageError(Exception):
    """A wrong command-line option of a torchrun worker (argparse's error, as one line)."""


def run_cli(main, argv=None, name='mmvpt'):
    """Runs a tool's ``main(argv)``. A user error (:data:`USER_ERRORS`, also one raised in a
    DataLoader worker) ends it with one line ``mmvpt: <error>`` on stderr and exit status 1;
    its traceback goes to the run's log file when MMEngine's runner has opened one (the line
    names it). Anything else raises as usual.

    Under tools/dist_train.sh / dist_test.sh (``$MMVPT_ERROR_FILE`` set) the line goes to that
    file instead, from the first rank that fails only, and the launcher prints it after
    torchrun ended: once, and last; the other ranks' failures that follow it go to their log
    files only. A wrong option is then such a line too (exit status 2) rather than argparse's
    usage text from every rank."""
    error_file = os.environ.get(ERROR_FILE_VAR)
    parser_error = argparse.ArgumentParser.error
    if error_file:
        argparse.ArgumentParser.error = _raise_usage_error
    try:
        return main(argv)
    except _UsageError as err:
        _report(f'{name}: {err}', 2, error_file)
    except USER_ERRORS as err:
        log_file = _log_traceback()
        where = f' (traceback in {log_file})' if log_file else ''
        # a KeyError's str() is the repr of its message
        message = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
        message = _worker_message(message, err)
        _report(f'{name}: {type(err).__name__}: {message}{where}', 1, error_file)
    except Exception:
        if not (error_file and os.path.exists(error_file)):
            raise
        # Another rank's user error came first and this is its consequence (gloo's
        # "Connection closed by peer" in a collective): its traceback would only bury the line.
        _log_traceback()
        sys.exit(1)
    finally:
        argparse.ArgumentParser.error = parser_error


def _raise_usage_error(parser, message):
    raise _UsageError(f'{parser.prog}: error: {message} (usage: {parser.prog} --help)')


def _report(line, status, error_file):
    """Prints ``line`` and exits with ``status``; with ``error_file``, leaves it there for
    tools/_torchrun.py if no other rank did first (creating the file exclusively decides
    which), printing nothing. A rank other than 0 first gives rank 0 a few seconds to report:
    an error every rank meets (a config value) is then rank 0's, whose line names its log file
    (the other ranks keep none)."""
    if error_file:
        if os.environ.get('RANK', '0') != '0':
            deadline = time.monotonic() + RANK0_GRACE_S
            while not os.path.exists(error_file) and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            fd = os.open(error_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            sys.exit(status)  # another rank failed first: its line is the one shown
        except OSError:
            pass  # no launcher to print it: print it here
        else:
            with os.fdopen(fd, 'w') as f:
                f.write(f'{status}\n{line}\n')
            sys.exit(status)
    print(line, file=sys.stderr)
    sys.exit(status)


def _worker_message(message, err):
    """The message of an error as raised in a DataLoader worker. torch re-raises it in the
    main process as the same type with the message ``Caught <Type> in DataLoader worker
    process N.\nOriginal Traceback ...``, the worker's whole traceback, whose end
    (``<module.Type>: <message>``) is the original message. Other messages come back
    unchanged."""
    kind = type(err)
    if not (message.startswith(f'Caught {kind.__name__} ')
            and '\nOriginal Traceback (most recent call last):\n' in message):
        return message
    last = message.rsplit('Traceback (most recent call last):\n', 1)[1].split('\n')
    # frames and their source lines are indented; the exception's line is not
    start = next((i for i, line in enumerate(last) if line and not line[0].isspace()), None)
    if start is None:
        return message
    text = '\n'.join(last[start:]).rstrip('\n')
    for prefix in (f'{kind.__module__}.{kind.__qualname__}: ', f'{kind.__qualname__}: '):
        if text.startswith(prefix):
            return text[len(prefix):]
    return message


def _log_traceback():
    """Writes the exception being handled to the current MMEngine log file, if any; returns
    the file's path or None."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()  # the runner's, once it is built
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.stream.write(traceback.format_exc())
        handler.flush()
    return files[0].baseFilename if files else None


def host_of(cfg):
    """The OpenMMLab library a config belongs to, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_HOSTS:
        raise ConfigError(
            f'default_scope={scope!r} in {cfg.filename}: mmvpt tools run configs of '
            f'{sorted(SUPPORTED_HOSTS)}; set default_scope to one of them')
    return scope


def _walk(node, path=''):
    """Yields (path, dict) for every dict in a nested config."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f'{path}[{i}]')


def check_mmvpt_types(cfg):
    """Fails with the config path of the first ``type='mmvpt.X'`` that no mmvpt registry has.

    MMEngine would only notice when that part is built, possibly after training started,
    and its message does not say where in the config the name stands.
    """
    known = set()
    for registry in ALL_REGISTRIES:
        registry.import_from_location()
        known.update(registry.module_dict)
    for path, node in _walk(cfg._cfg_dict.to_dict()):
        type_name = node.get('type')
        if isinstance(type_name, str) and type_name.startswith('mmvpt.'):
            name = type_name[len('mmvpt.'):]
            if name not in known:
                raise ConfigError(
                    f'{path}.type={type_name!r} in {cfg.filename}: no such mmvpt type. '
                    f'Known mmvpt types: {", ".join(sorted(known))}')


def adapt_to_device(cfg, launcher):
    """Keeps a GPU config runnable on CPU: SyncBN becomes BN, DDP gets no device ids and
    collectives go through gloo. A GPU machine gets the config unchanged."""
    if torch.cuda.is_available():
        return cfg
    for _, node in _walk(cfg._cfg_dict):
        if node.get('type') in _SYNC_BN_TYPES:
            node['type'] = 'BN'
    if launcher != 'none':
        wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
        wrapper.setdefault('device_ids', None)
        cfg.model_wrapper_cfg = wrapper
        cfg.setdefault('env_cfg', dict())
        cfg.env_cfg.setdefault('dist_cfg', dict())
        cfg.env_cfg.dist_cfg['backend'] = 'gloo'
    return cfg


# optim_wrapper types that --amp can turn into a mixed-precision one.
_AMP_WRAPPABLE = ('OptimWrapper', 'AmpOptimWrapper', 'mmvpt.BF16AmpOptimWrapper')


def enable_amp(cfg):
    """``--amp``: automatic mixed precision fitting the machine. On GPU MMEngine's
    ``AmpOptimWrapper`` (float16 autocast, dynamic loss scaling unless the config sets
    ``loss_scale``); on CPU ``mmvpt.BF16AmpOptimWrapper`` (bfloat16 autocast, the only kind
    CPU autocast runs, without loss scaling), since MMEngine's wrapper refuses to be built
    without a GPU."""
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in _AMP_WRAPPABLE:
        raise ConfigError(f'--amp needs optim_wrapper.type OptimWrapper, not {kind!r}')
    if torch.cuda.is_available():
        wrapper.type = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
        return cfg
    dtype = wrapper.pop('dtype', None)
    if dtype not in (None, 'bfloat16', torch.bfloat16):
        raise ConfigError(f'--amp on CPU runs bfloat16 autocast; optim_wrapper.dtype={dtype!r} '
                          'cannot be used without a GPU')
    wrapper.type = 'mmvpt.BF16AmpOptimWrapper'
    wrapper.pop('loss_scale', None)  # a GPU setting: bfloat16 needs no loss scaling
    return cfg


_TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def _slurm_to_torch_env(port):
    """Sets torchrun's variables from SLURM's, as MMEngine does for its slurm launcher."""
    needed = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise RuntimeError(f'launcher "slurm" cannot start: {", ".join(missing)} not set; '
                           'run it through srun (tools/slurm_train.sh)')
    node_list = os.environ['SLURM_NODELIST']
    try:
        addr = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1').strip()
    except OSError:
        addr = ''
    os.environ.setdefault('MASTER_ADDR', addr or '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', str(port or 29500))
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def init_distributed(launcher, port=None):
    """Checks that ``launcher`` can start and, on CPU, starts the gloo process group.

    On GPU MMEngine's own ``init_dist`` runs later (it calls ``torch.cuda.set_device``,
    which is why CPU runs have to be set up here first).
    """
    if launcher == 'none':
        return
    if launcher == 'pytorch':
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        if missing:
            raise RuntimeError(
                f'launcher "pytorch" cannot start: {", ".join(missing)} not set. Start it with '
                'torchrun, e.g. tools/dist_train.sh CONFIG NUM_PROCESSES')
    elif launcher == 'slurm':
        if not torch.cuda.is_available():
            _slurm_to_torch_env(port)
    elif launcher == 'mpi':
        if 'OMPI_COMM_WORLD_LOCAL_RANK' not in os.environ:
            raise RuntimeError('launcher "mpi" cannot start: OMPI_COMM_WORLD_LOCAL_RANK not set; '
                               'run it through mpirun')
    else:
        raise RuntimeError(f'unknown launcher {launcher!r}; use none, pytorch, slurm or mpi')
    if not torch.cuda.is_available() and not torch.distributed.is_initialized():
        if launcher == 'mpi':
            os.environ.setdefault('RANK', os.environ['OMPI_COMM_WORLD_RANK'])
            os.environ.setdefault('WORLD_SIZE', os.environ['OMPI_COMM_WORLD_SIZE'])
            os.environ.setdefault('LOCAL_RANK', os.environ['OMPI_COMM_WORLD_LOCAL_RANK'])
        torch.distributed.init_process_group(backend='gloo')


def finish_distributed():
    """Waits for every rank, then closes the process group: a rank that exits while another
    still writes its checkpoint can otherwise abort in the communication library's threads."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def add_training_hooks(cfg):
    """What mmvpt's train tool adds to any config: its CheckpointHook in place of MMEngine's
    (same arguments; atomic writes, exact resume), the parameter report and
    :func:`add_frozen_init_hook`'s hook."""
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint is not None and checkpoint.get('type') in ('CheckpointHook',
                                                             'mmengine.CheckpointHook'):
        checkpoint['type'] = 'mmvpt.CheckpointHook'
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(str(h.get('type', '')).endswith('ParameterReportHook') for h in hooks):
        cfg.custom_hooks = hooks + [dict(type='mmvpt.ParameterReportHook')]
    return add_frozen_init_hook(cfg)


# the hook that derives a method's tensors from the frozen weights, and its former name
_FROZEN_INIT_HOOKS = ('FrozenInitHook', 'CrossAttentionInitHook')


def add_frozen_init_hook(cfg):
    """``mmvpt.FrozenInitHook`` for a model whose method derives tensors from the frozen
    weights (its class declares ``derived_from_frozen``: CVPT, DoRA) and a config that lists
    no such hook: without it, a backbone arriving by ``load_from`` would leave them derived
    from the ``init_cfg`` weights (tools/train.py and tools/test.py add it). The hooks of a
    method the model does not use go first (:func:`drop_method_hooks`)."""
    drop_method_hooks(cfg)
    hooks = list(cfg.get('custom_hooks') or [])
    if any(str(h.get('type', '')).split('.')[-1] in _FROZEN_INIT_HOOKS for h in hooks):
        return cfg
    MODELS.import_from_location()
    derives = False
    for _, node in _walk(cfg.get('model')):
        name = node.get('type')
        if isinstance(name, str) and name.startswith('mmvpt.'):
            derives |= bool(getattr(MODELS.get(name), 'derived_from_frozen', ()))
    if derives:
        cfg.custom_hooks = hooks + [dict(type='mmvpt.FrozenInitHook')]
    return cfg


def drop_method_hooks(cfg):
    """Drops the ``custom_hooks`` that belong to a method the config's model does not use (a
    hook class declaring ``serves_method``: ``mmvpt.FrozenInitHook`` / its alias
    ``CrossAttentionInitHook``, ``mmvpt.PromptPruningHook``), one line on stderr for each: a
    config that switches methods inherits the former method's hooks, which would run on a
    model they were not written for (tools/train.py and tools/test.py, by
    :func:`add_frozen_init_hook`)."""
    hooks = cfg.get('custom_hooks')
    if not hooks:
        return cfg
    from mmvpt.models.prompts.base import PromptMethod
    from mmvpt.registry import HOOKS
    MODELS.import_from_location()
    HOOKS.import_from_location()
    classes = [MODELS.get(node['type']) for _, node in _walk(cfg.get('model'))
               if str(node.get('type', '')).startswith('mmvpt.')]
    classes = [cls for cls in classes if isinstance(cls, type)]
    methods = sorted({cls.__name__ for cls in classes if issubclass(cls, PromptMethod)})
    kept = []
    for hook in hooks:
        name = hook.get('type') if isinstance(hook, dict) else None
        hook_class = HOOKS.get(name) if str(name).startswith('mmvpt.') else None
        serves_method = getattr(hook_class, 'serves_method', None)
        if serves_method is None or any(serves_method(cls) for cls in classes):
            kept.append(hook)
        elif os.environ.get('RANK', '0') == '0':  # once, not per process
            print(f"mmvpt: custom_hooks: {name} dropped: it serves {hook_class.serves}, and the "
                  f"model's method is {', '.join(methods) or 'none'}", file=sys.stderr)
    cfg.custom_hooks = kept
    return cfg


def _classification_tta(cfg):
    """Flip averaging, for classification configs that bring no TTA of their own."""
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        test_pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
        *loading, pack = test_pipeline
        flips = [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                 dict(type='RandomFlip', prob=1.0, direction='horizontal')]
        cfg.tta_pipeline = loading + [dict(type='TestTimeAug', transforms=[flips, [pack]])]


def apply_tta(cfg):
    """``--tta``: the test runs the config's ``tta_model`` on its ``tta_pipeline``
    (segmentation: multi-scale + flip); classification configs without one get flip
    averaging."""
    if host_of(cfg) == 'mmpretrain':
        _classification_tta(cfg)
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ConfigError(f'--tta: {cfg.filename} defines no {" / ".join(missing)}')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    return cfg


def add_test_output(cfg, out):
    """``tools/test.py --out``: classification dumps its predictions to the pickle file
    ``out``, segmentation writes its predicted label PNGs to the folder ``out``."""
    if host_of(cfg) == 'mmseg':
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    else:
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
        cfg.test_evaluator = evaluators + [dict(type='DumpResults', out_file_path=out)]
    return cfg


def prepare_config(config_path, cfg_options=None, work_dir=None, launcher='none'):
    """Loads a config and makes it ready for MMEngine's runner on this machine.

    Imports the host library and mmvpt, checks mmvpt types, sets the work dir
    (default ``./work_dirs/<config name>``), adapts the config to the device, checks the
    data before it is used (``mmvpt.DataCheckHook``) and lets MMEngine load its own
    checkpoints under torch >= 2.6. ``config_path`` may be a ``Config`` already read (a
    checkpoint's saved one): a copy of it is prepared.
    """
    if isinstance(config_path, Config):
        cfg, config_path = copy.deepcopy(config_path), config_path.filename or 'config.py'
    elif not osp.isfile(config_path):
        raise FileNotFoundError(f'config file {config_path!r} does not exist')
    else:
        cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    host = host_of(cfg)
    importlib.import_module(SUPPORTED_HOSTS[host])
    importlib.import_module('mmvpt')
    check_mmvpt_types(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    adapt_to_device(cfg, launcher)
    # Bad data (missing or empty images, too few classes) named before training or testing.
    cfg.setdefault('default_hooks', dict()).setdefault('data_check',
                                                       dict(type='mmvpt.DataCheckHook'))
    register_checkpoint_loader()
    return cfg
