"""A config's protocol: what its method declares (or the config itself, under ``protocol``),
for the config's benchmark, with the command line's overrides, as stage objects."""
import argparse
import copy
import dataclasses
import hashlib
import json
import numbers
import os.path as osp
from fractions import Fraction

from mmvpt.utils.protocol_results import ProtocolError

# Dataset types the protocols know, and the splits of their stages. FGVC's final runs train on
# train, as VPT's train.py (and E²VPT's) do: FGVC's val is cut from its train split.
BENCHMARKS = {
    'vtab': dict(title='VTAB-1k', types=('mmvpt.VTAB1k', 'VTAB1k'), train='train800',
                 val='val200', final_train='train800val200', test='test'),
    'fgvc': dict(title='FGVC', types=('mmvpt.FGVC', 'FGVC'), train='train', val='val',
                 final_train='train', test='test'),
}

# Search axes by their short names: the config key each sets, and its label in run names.
AXES = {
    'lr': ('optim_wrapper.optimizer.lr', 'lr'),
    'wd': ('optim_wrapper.optimizer.weight_decay', 'wd'),
    'num_tokens': ('model.backbone.prompt.num_tokens', 'P'),
}

# Config keys the protocol sets itself; --cfg-options may not override them.
PROTOCOL_KEYS = {
    **{f'{loader}_dataloader.dataset.split': 'the protocol picks the split of each stage'
       for loader in ('train', 'val', 'test')},
    'optim_wrapper.optimizer.lr': 'use --lrs (search) or --lr (final)',
    'optim_wrapper.optimizer.weight_decay': 'use --wds (search) or --wd (final)',
    'randomness.seed': 'use --seeds',
}

SCORES = ('last', 'best')


def axis_key(axis):
    return AXES[axis][0] if axis in AXES else axis


def axis_label(axis):
    return AXES[axis][1] if axis in AXES else axis.rsplit('.', 1)[-1]


def value_name(value):
    return f'{value:g}' if isinstance(value, float) else str(value)


@dataclasses.dataclass
class Overrides:
    """What the command line changes of a declared protocol (None: as declared)."""
    lrs: list = None            # the search's lr values, absolute
    wds: list = None
    num_tokens: list = None     # the search's prompt lengths (adds the axis where absent)
    seeds: list = None
    lr: float = None            # the final stage's lr / wd instead of the search's
    wd: float = None
    token_fractions: list = None
    piece_fractions: list = None


def check_fractions(name, values):
    for value in values:
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < 1:
            raise ProtocolError(f'{name} {value!r}: pruning fractions lie in (0, 1), e.g. 0.1 for '
                                '10%')
    return [Fraction(str(value)) for value in values]


# ----------------------------------------------------------------------------- the config

def parse_cfg_options(raw_options):
    """``['a.b=1', ...]`` -> dict, parsed the way tools/train.py parses them."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--options', nargs='+', action=DictAction, default={})
    options = parser.parse_args(['--options', *raw_options]).options if raw_options else {}
    for key in options:
        if key in PROTOCOL_KEYS:
            raise ProtocolError(f'--cfg-options {key}: set by the protocol; {PROTOCOL_KEYS[key]}')
    return options


def describe_config(config, raw_options=()):
    """What the protocol needs of a config: benchmark, task, method (its config folder, name,
    prompt type, P), batch size, epochs, optimizer, the protocol it declares (None: its
    method's) and a fingerprint of what it trains."""
    from mmengine.config import Config

    from mmvpt.utils.protocol_results import method_record
    if not osp.isfile(config):
        raise ProtocolError(f'config file {config!r} does not exist')
    cfg = Config.fromfile(config, import_custom_modules=False)
    cfg.merge_from_dict(parse_cfg_options(list(raw_options)))
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    benchmark = next((name for name, spec in BENCHMARKS.items()
                      if dataset.get('type') in spec['types']), None)
    if benchmark is None:
        raise ProtocolError(
            f"{config}: train_dataloader.dataset.type={dataset.get('type')!r}; the protocols run "
            "VTAB-1k ('mmvpt.VTAB1k') and FGVC ('mmvpt.FGVC') configs only")
    task = cfg.get('task') or dataset.get('task')
    if not task:
        raise ProtocolError(f'{config}: names no task (a top-level `task` or '
                            'train_dataloader.dataset.task)')
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    prompt = backbone.get('prompt')
    trained = {key: cfg.get(key) for key in ('model', 'optim_wrapper', 'train_cfg')}
    fingerprint = hashlib.sha1(json.dumps(trained, sort_keys=True, default=repr).encode())
    return dict(
        config=config, benchmark=benchmark, task=task,
        method=osp.basename(osp.dirname(osp.abspath(config))),
        batch_size=cfg.train_dataloader.batch_size,
        epochs=(cfg.get('train_cfg') or {}).get('max_epochs'),
        optimizer=cfg.optim_wrapper.optimizer.get('type'),
        lr=cfg.optim_wrapper.optimizer.get('lr'),
        wd=cfg.optim_wrapper.optimizer.get('weight_decay'),
        custom_hooks=[hook.to_dict() if hasattr(hook, 'to_dict') else dict(hook)
                      for hook in cfg.get('custom_hooks') or []],
        prompt=prompt.to_dict() if hasattr(prompt, 'to_dict') else prompt,
        frozen=backbone.get('frozen', True),
        declared=cfg.get('protocol'), fingerprint=fingerprint.hexdigest()[:12],
        **method_record(cfg.get('model')))


def method_class(info):
    """The registered class of the config's prompt method, or None."""
    if info['prompt'] is None:
        return None
    import mmvpt.models  # noqa: F401  registers the methods
    from mmvpt.registry import MODELS
    method = MODELS.get(info['prompt']['type'])
    if method is None:
        raise ProtocolError(f"{info['config']}: model.backbone.prompt.type="
                            f"{info['prompt']['type']!r} is not a registered method")
    return method


# ---------------------------------------------------------------------------- the protocol

@dataclasses.dataclass
class Protocol:
    name: str
    source: str
    note: str
    optimizer: str
    options: dict
    drop_hooks: tuple
    stages: list

    def stage(self, name):
        return next((stage for stage in self.stages if stage.name == name), None)


def declared_protocol(info):
    """The declaration that applies to a config: its own ``protocol``, else its method's."""
    if info['declared'] is not None:
        declared, owner = info['declared'], f"{info['config']} (its `protocol`)"
    else:
        method = method_class(info)
        declared = getattr(method, 'protocol', None)
        owner = method.__name__ if method is not None else 'the config'
        if declared is None:
            raise ProtocolError(
                f"{info['config']}: {owner} declares no protocol; give the config one "
                '(`protocol = dict(...)`, see mmvpt/models/utils/protocols.py)')
    declared = copy.deepcopy(declared.to_dict() if hasattr(declared, 'to_dict') else declared)
    per_benchmark = declared.pop(info['benchmark'], None)
    for other in BENCHMARKS:
        declared.pop(other, None)
    if isinstance(per_benchmark, dict):
        declared = per_benchmark
    elif per_benchmark is not None:
        declared['stages'] = per_benchmark
    if not declared.get('stages'):
        raise ProtocolError(f"{owner}: its protocol has no stages for {info['benchmark']}")
    return declared, owner


def resolve_protocol(info, overrides=None):
    """The :class:`Protocol` of a config (``info``: :func:`describe_config`) with the command
    line's ``overrides``; an override for a stage the protocol has not is an error."""
    from .stages import build_stage
    overrides = overrides or Overrides()
    declared, owner = declared_protocol(info)
    protocol = Protocol(
        name=declared.get('name') or owner, source=declared.get('source'),
        note=declared.get('note'), optimizer=declared.get('optimizer'),
        options=dict(declared.get('options') or {}),
        drop_hooks=tuple(declared.get('drop_hooks') or ()), stages=[])
    for spec in declared['stages']:
        spec = dict(spec)
        kind = spec.pop('type', None)
        try:
            protocol.stages.extend(build_stage(kind, spec, info))
        except (TypeError, ValueError) as err:
            raise ProtocolError(f'{owner}: protocol stage {kind!r}: {err}') from None
    apply_overrides(protocol, overrides, info)
    searched = protocol.stage('grid')
    if searched is not None and 'lr' in searched.space and protocol.optimizer not in (
            None, info['optimizer']):
        raise ProtocolError(
            f"{info['config']}: {protocol.name} protocol searches lrs for {protocol.optimizer}, "
            f"but the config trains with {info['optimizer']}; put the optimizer back or give the "
            'config a `protocol` of its own')
    return protocol


def apply_overrides(protocol, overrides, info):
    search, prune, final = (protocol.stage(name) for name in ('grid', 'rewind', 'final'))
    for name, axis in (('lrs', 'lr'), ('wds', 'wd'), ('num_tokens', 'num_tokens')):
        values = getattr(overrides, name)
        if values is None:
            continue
        if search is None:
            raise ProtocolError(
                f"--{name.replace('_', '-')}: {protocol.name} protocol searches nothing (its "
                'recipe is fixed: ' + (protocol.source or 'see the config') + '); use --lr / '
                '--wd to train the final runs with other values')
        search.set_axis(axis, values)
    if overrides.num_tokens is not None and info['prompt'] is None:
        raise ProtocolError('--num-tokens: the config has no prompt method')
    for name in ('token_fractions', 'piece_fractions'):
        values = getattr(overrides, name)
        if values is None:
            continue
        if prune is None:
            raise ProtocolError(f"--{name.replace('_', '-')}: {protocol.name} protocol has no "
                                "pruning stage; pruning candidates belong to E2VPT's")
        setattr(prune.pruning, name, check_fractions(f"--{name.replace('_', '-')}", values))
    if overrides.seeds is not None:
        final.seeds = list(overrides.seeds)
    final.lr, final.wd = overrides.lr, overrides.wd
