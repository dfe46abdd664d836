"""VPT's evaluation protocol for one VTAB-1k or FGVC config: an lr x weight-decay grid on
the train / val split, then training on train+val with the best pair under several seeds,
each tested once.

    python tools/protocol.py CONFIG [--work-dir DIR] [--stage grid|final|all]
        [--lrs LR ...] [--wds WD ...] [--seeds SEED ...] [--lr LR] [--wd WD]
        [--launcher local|dist|slurm] [--gpus N] [--partition P] [--job-name NAME]
        [--print-only] [--cfg-options k=v ...]

Layout of the work dir (default ``work_dirs/protocol/<method>/<config name>``)::

    grid/lr<lr>_wd<wd>/         a grid run: train800 -> val200 (FGVC: train -> val), first seed
    grid/lr<lr>_wd<wd>/score.json   its score, the accuracy/top1 of its last validation
    grid/summary.json           every run's score and the best (lr, wd)
    final/seed<seed>/           train800val200 (FGVC: trainval) with the best (lr, wd)
    final/seed<seed>/trained.json   written when that training finished
    final/seed<seed>/test/      the test of its last checkpoint (MMEngine's <ts>/<ts>.json)
    final/summary.json          test accuracy per seed, mean, std, tuned parameters, the
                                method (name, prompt type) and its prompt count P

A run with a result (score.json, a test json) is skipped, so the tool can be started again
after an interruption; a run without one starts over from scratch. The summaries' format,
and reading what the runs leave, live in :mod:`mmvpt.utils.protocol_results`.
"""
import argparse
import math
import os
import os.path as osp
import shlex
import subprocess
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
from mmvpt.utils.protocol_results import (METRIC, ProtocolError, final_summary,  # noqa: E402
                                          grid_summary, last_checkpoint, last_validation,
                                          method_record, newest_log, parameter_counts,
                                          read_json, test_accuracy, write_json)

TOOLS_DIR = osp.dirname(osp.abspath(__file__))

# VPT (Jia et al. 2022), appendix: base lrs scaled by batch / 256, weight decays, seeds.
VPT_BASE_LRS = (50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05)
VPT_WDS = (0.01, 1e-3, 1e-4, 0.)
VPT_SEEDS = (42, 44, 82, 100, 800)

# Dataset types the protocol knows, and the splits of each of its stages.
BENCHMARKS = {
    'vtab': dict(types=('mmvpt.VTAB1k', 'VTAB1k'), grid_train='train800', grid_val='val200',
                 final_train='train800val200', test='test'),
    'fgvc': dict(types=('mmvpt.FGVC', 'FGVC'), grid_train='train', grid_val='val',
                 final_train='trainval', test='test'),
}

# Config keys the protocol sets itself; --cfg-options may not override them.
PROTOCOL_KEYS = {
    'train_dataloader.dataset.split': 'the protocol picks the split of each stage',
    'val_dataloader.dataset.split': 'the protocol picks the split of each stage',
    'test_dataloader.dataset.split': 'the protocol picks the split of each stage',
    'optim_wrapper.optimizer.lr': 'use --lrs (grid) or --lr (final)',
    'optim_wrapper.optimizer.weight_decay': 'use --wds (grid) or --wd (final)',
    'randomness.seed': 'use --seeds',
}

class Unquoted(str):
    """A command argument that is shell syntax (``$(cat ...)``, ``${LR}``), printed as is."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="VPT's protocol: lr x wd grid on train/val, then seeds on train+val -> test")
    parser.add_argument('config', help='a VTAB-1k (mmvpt.VTAB1k) or FGVC (mmvpt.FGVC) config')
    parser.add_argument('--work-dir', help='default: work_dirs/protocol/<method>/<config name>')
    parser.add_argument('--stage', choices=['grid', 'final', 'all'], default='all')
    parser.add_argument('--lrs', type=float, nargs='+',
                        help='grid learning rates, absolute (default: VPT\'s {50, 25, 10, 5, '
                        '2.5, 1, 0.5, 0.25, 0.1, 0.05} x batch / 256)')
    parser.add_argument('--wds', type=float, nargs='+', default=list(VPT_WDS),
                        help='grid weight decays (default: 0.01 0.001 0.0001 0)')
    parser.add_argument('--seeds', type=int, nargs='+', default=list(VPT_SEEDS),
                        help='final-stage seeds; the grid uses the first '
                        '(default: 42 44 82 100 800)')
    parser.add_argument('--lr', type=float, help='final-stage lr instead of the grid\'s best')
    parser.add_argument('--wd', type=float, help='final-stage weight decay instead of the grid\'s')
    parser.add_argument('--launcher', choices=['local', 'dist', 'slurm'], default='local',
                        help='local: python tools/train.py; dist: tools/dist_train.sh; '
                        'slurm: tools/slurm_train.sh')
    parser.add_argument('--gpus', type=int, default=1,
                        help='processes (GPUs) per run for dist / slurm')
    parser.add_argument('--partition', help='SLURM partition (--launcher slurm)')
    parser.add_argument('--job-name', help='SLURM job name (default: <method>-<task>)')
    parser.add_argument('--print-only', action='store_true',
                        help='print the shell commands of the runs still to do, run nothing')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides passed to every run')
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error('--gpus must be at least 1')
    if args.launcher == 'local' and args.gpus != 1:
        parser.error('--launcher local runs one process; use --launcher dist or slurm for '
                     f'--gpus {args.gpus}')
    if args.launcher == 'slurm' and not args.partition:
        parser.error('--launcher slurm needs --partition')
    return args


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
    """What the protocol needs to know of a config: benchmark, method (its folder, name,
    prompt type and P), task, batch size."""
    from mmengine.config import Config
    if not osp.isfile(config):
        raise ProtocolError(f'config file {config!r} does not exist')
    # No custom imports: reading the config must not cost a torch import.
    cfg = Config.fromfile(config, import_custom_modules=False)
    cfg.merge_from_dict(parse_cfg_options(list(raw_options)))
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    dataset_type = dataset.get('type')
    benchmark = next((name for name, spec in BENCHMARKS.items() if dataset_type in spec['types']),
                     None)
    if benchmark is None:
        raise ProtocolError(
            f'{config}: train_dataloader.dataset.type={dataset_type!r}; the VPT protocol runs '
            "VTAB-1k ('mmvpt.VTAB1k') and FGVC ('mmvpt.FGVC') configs only")
    task = cfg.get('task') or dataset.get('task')
    if not task:
        raise ProtocolError(f'{config}: names no task (a top-level `task` or '
                            'train_dataloader.dataset.task)')
    return dict(config=config, benchmark=benchmark, task=task,
                method=osp.basename(osp.dirname(osp.abspath(config))),
                batch_size=cfg.train_dataloader.batch_size, **method_record(cfg.get('model')))


def default_lrs(batch_size):
    """VPT's lr grid for a total batch size; rounded so 0.1 x 32 / 256 reads 0.0125."""
    return [float(f'{base * batch_size / 256:.12g}') for base in VPT_BASE_LRS]


def value_name(value):
    return f'{value:g}'


def grid_points(lrs, wds):
    """(lr, wd) pairs in grid order, lr outer; the order breaks ties between scores."""
    points = [(lr, wd) for lr in lrs for wd in wds]
    names = [grid_run_name(lr, wd) for lr, wd in points]
    if len(set(names)) != len(names):
        raise ProtocolError(f'--lrs / --wds: repeated values give the same run twice: {names}')
    return points


def grid_run_name(lr, wd):
    return f'lr{value_name(lr)}_wd{value_name(wd)}'


# ------------------------------------------------------------------------ commands and runs

def stage_options(splits, lr, wd, seed):
    """--cfg-options of one run: its splits, lr, weight decay and seed. ``lr`` / ``wd`` may
    be shell variables (Unquoted) in --print-only mode."""
    options = [f'{loader}_dataloader.dataset.split={split}' for loader, split in splits.items()]
    for key, value in (('optim_wrapper.optimizer.lr', lr),
                       ('optim_wrapper.optimizer.weight_decay', wd)):
        options.append(Unquoted(f'{key}={value}') if isinstance(value, Unquoted)
                       else f'{key}={float(value)!r}')
    options.append(f'randomness.seed={seed}')
    return options


def slurm_env(args):
    """slurm_*.sh read the process count from GPUS; GPUS_PER_NODE (default 8 there) must not
    exceed it on a single node, unless the user set it."""
    env = {'GPUS': str(args.gpus)}
    if 'GPUS_PER_NODE' not in os.environ:
        env['GPUS_PER_NODE'] = str(min(args.gpus, 8))
    return env


def train_command(args, info, work_dir, options, validate=True):
    """(argv, extra environment) of one training run with the chosen launcher."""
    extra = [] if validate else ['--no-validate']
    extra += ['--cfg-options', *options, *args.cfg_options]
    config = info['config']
    if args.launcher == 'local':
        return [sys.executable, osp.join(TOOLS_DIR, 'train.py'), config,
                '--work-dir', work_dir, *extra], {}
    if args.launcher == 'dist':
        return ['bash', osp.join(TOOLS_DIR, 'dist_train.sh'), config, str(args.gpus),
                '--work-dir', work_dir, *extra], {}
    return ['bash', osp.join(TOOLS_DIR, 'slurm_train.sh'), args.partition, job_name(args, info),
            config, work_dir, *extra], slurm_env(args)


def test_command(args, info, checkpoint, work_dir, options):
    extra = ['--work-dir', work_dir, '--cfg-options', *options, *args.cfg_options]
    config = info['config']
    if args.launcher == 'local':
        return [sys.executable, osp.join(TOOLS_DIR, 'test.py'), config, checkpoint, *extra], {}
    if args.launcher == 'dist':
        return ['bash', osp.join(TOOLS_DIR, 'dist_test.sh'), config, checkpoint,
                str(args.gpus), *extra], {}
    return ['bash', osp.join(TOOLS_DIR, 'slurm_test.sh'), args.partition, job_name(args, info),
            config, checkpoint, *extra], slurm_env(args)


def job_name(args, info):
    return args.job_name or f'{info["method"]}-{info["task"]}'


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


# ---------------------------------------------------------------------------------- stages

def run_grid(args, info, work_dir):
    """Trains every (lr, wd) on the grid split pair. Returns the grid summary, or None in
    --print-only mode while runs are left to do."""
    splits = BENCHMARKS[info['benchmark']]
    lrs = args.lrs or default_lrs(info['batch_size'] * args.gpus)
    seed = args.seeds[0]
    if args.print_only:
        print(f'# grid: {len(lrs)} lr x {len(args.wds)} wd, train {splits["grid_train"]} -> '
              f'validate {splits["grid_val"]}, seed {seed}')
    runs = []
    for lr, wd in grid_points(lrs, args.wds):
        run_dir = osp.join(work_dir, 'grid', grid_run_name(lr, wd))
        score_file = osp.join(run_dir, 'score.json')
        if osp.isfile(score_file):
            runs.append(read_json(score_file))
            print(f'# done: {run_dir} (score {runs[-1]["score"]})' if args.print_only else
                  f'[protocol] skip {run_dir}: finished (score {runs[-1]["score"]})')
            continue
        options = stage_options(dict(train=splits['grid_train'], val=splits['grid_val']),
                                lr, wd, seed)
        argv, env = train_command(args, info, run_dir, options)
        if args.print_only:
            print(format_command(argv, env))
            continue
        execute(argv, env, run_dir, f'grid run {grid_run_name(lr, wd)}')
        score, step, scalars = last_validation(run_dir)
        runs.append(dict(lr=lr, wd=wd, seed=seed, score=score, step=step, scalars=scalars,
                         work_dir=run_dir))
        write_json(score_file, runs[-1])
    if len(runs) < len(lrs) * len(args.wds):
        return None
    summary = grid_summary(info, splits, seed, info['batch_size'] * args.gpus, lrs, args.wds, runs)
    best = summary['best']
    if not args.print_only:
        write_json(osp.join(work_dir, 'grid', 'summary.json'), summary)
        print(f'[protocol] grid done: best lr {best["lr"]:g}, wd {best["wd"]:g} '
              f'({METRIC} {best["score"]:.2f}); {osp.join(work_dir, "grid", "summary.json")}')
    return summary


def final_lr_wd(args, work_dir, grid):
    """(lr, wd, source) for the final stage: --lr/--wd, else the grid's best (``grid``: its
    summary); None if neither is known yet."""
    summary_file = osp.join(work_dir, 'grid', 'summary.json')
    if grid is None and args.stage == 'final' and osp.isfile(summary_file):
        grid = read_json(summary_file)
    best = grid['best'] if grid else {}
    lr = args.lr if args.lr is not None else best.get('lr')
    wd = args.wd if args.wd is not None else best.get('wd')
    if lr is None or wd is None:
        return None
    given = (args.lr is not None) + (args.wd is not None)
    return lr, wd, ('grid', 'grid+explicit', 'explicit')[given]


def run_final(args, info, work_dir, lr, wd, lr_source):
    """Trains on train+val once per seed and tests each last checkpoint; writes and returns
    final/summary.json (None in --print-only mode)."""
    splits = BENCHMARKS[info['benchmark']]
    accuracies = {}
    if args.print_only:
        print(f'# final: train {splits["final_train"]} (no validation) -> test '
              f'{splits["test"]}, seeds {" ".join(map(str, args.seeds))}')
    for seed in args.seeds:
        seed_dir = osp.join(work_dir, 'final', f'seed{seed}')
        trained_file = osp.join(seed_dir, 'trained.json')
        if osp.isfile(trained_file):
            check_same_lr_wd(read_json(trained_file), lr, wd, seed_dir)
        accuracy = test_accuracy(osp.join(seed_dir, 'test'))
        if accuracy is not None:
            print(f'# done: {seed_dir} (test {METRIC} {accuracy})' if args.print_only else
                  f'[protocol] skip {seed_dir}: finished (test {METRIC} {accuracy})')
        else:
            checkpoint = train_seed(args, info, seed_dir, lr, wd, seed)
            accuracy = evaluate_seed(args, info, seed_dir, checkpoint, seed)
        accuracies[seed] = accuracy
    if args.print_only:
        return None

    tuned, total = parameter_counts(osp.join(work_dir, 'final', f'seed{args.seeds[0]}'))
    summary = final_summary(info, splits, lr, wd, lr_source,
                            {seed: accuracies[seed] for seed in args.seeds}, tuned, total, work_dir)
    summary_file = osp.join(work_dir, 'final', 'summary.json')
    write_json(summary_file, summary)
    print(f'[protocol] final: {METRIC} {summary["mean"]:.2f} +- {summary["std"]:.2f} over '
          f'{len(args.seeds)} seeds; tuned {summary["tuned_percent"]:.4f}%; {summary_file}')
    return summary


def train_seed(args, info, seed_dir, lr, wd, seed):
    """Trains one seed on train+val unless done; returns its last checkpoint (in
    --print-only mode, shell code that reads it once training has run)."""
    trained_file = osp.join(seed_dir, 'trained.json')
    if osp.isfile(trained_file):
        print(f'# trained: {seed_dir}' if args.print_only else
              f'[protocol] skip training {seed_dir}: finished, testing it')
        return read_json(trained_file)['checkpoint']
    splits = BENCHMARKS[info['benchmark']]
    options = stage_options(dict(train=splits['final_train']), lr, wd, seed)
    argv, env = train_command(args, info, seed_dir, options, validate=False)
    if args.print_only:
        print(format_command(argv, env))
        return Unquoted(f'"$(cat {shlex.quote(osp.join(seed_dir, "last_checkpoint"))})"')
    execute(argv, env, seed_dir, f'final training, seed {seed}')
    checkpoint = last_checkpoint(seed_dir)
    write_json(trained_file, dict(lr=lr, wd=wd, seed=seed, checkpoint=checkpoint))
    return checkpoint


def evaluate_seed(args, info, seed_dir, checkpoint, seed):
    """Tests a seed's checkpoint on the test split; its accuracy (None in --print-only)."""
    test_dir = osp.join(seed_dir, 'test')
    options = [f'test_dataloader.dataset.split={BENCHMARKS[info["benchmark"]]["test"]}',
               f'randomness.seed={seed}']
    argv, env = test_command(args, info, checkpoint, test_dir, options)
    if args.print_only:
        print(format_command(argv, env))
        return None
    execute(argv, env, test_dir, f'test, seed {seed}')
    accuracy = test_accuracy(test_dir)
    if accuracy is None:
        raise ProtocolError(f'test, seed {seed}: finished but left no <ts>/<ts>.json in '
                            f'{test_dir}')
    return accuracy


def check_same_lr_wd(trained, lr, wd, seed_dir):
    """A finished seed run is reused only for the lr / wd it was trained with."""
    if isinstance(lr, Unquoted) or isinstance(wd, Unquoted):
        return
    if not (math.isclose(trained['lr'], lr) and math.isclose(trained['wd'], wd)):
        raise ProtocolError(
            f'{seed_dir} was trained with lr {trained["lr"]:g}, wd {trained["wd"]:g}, not '
            f'lr {lr:g}, wd {wd:g}; remove it or use another --work-dir')


def main(argv=None):
    args = parse_args(argv)
    info = describe_config(args.config, args.cfg_options)
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'protocol', info['method'], osp.splitext(osp.basename(args.config))[0])

    grid = None
    if args.stage in ('grid', 'all'):
        grid = run_grid(args, info, work_dir)
    if args.stage == 'grid':
        return grid

    chosen = final_lr_wd(args, work_dir, grid)
    if chosen is None:
        if not args.print_only:
            raise ProtocolError(
                f'final stage: no lr / wd to train with: '
                f'{osp.join(work_dir, "grid", "summary.json")} does not exist; run the grid '
                'first (--stage grid) or pass --lr and --wd')
        print('# final stage: the best lr / wd are not known yet (no grid/summary.json and no '
              '--lr / --wd).\n# The commands below read them from the shell variables LR and '
              'WD: set those to grid/summary.json\'s "best" once the grid runs are done, or '
              'run this tool again with --stage final then.')
        return run_final(args, info, work_dir, Unquoted('${LR}'), Unquoted('${WD}'), 'unknown')
    return run_final(args, info, work_dir, *chosen)


if __name__ == '__main__':
    try:
        main()
    except ProtocolError as err:
        print(f'protocol.py: error: {err}', file=sys.stderr)
        sys.exit(1)
