"""Running a config's protocol: its work dir, the plan (--print-only), the stages in order, each
run a job with its own result, skipped once it has one.

Work dir (default ``work_dirs/protocol/<method folder>/<config name>``)::

    protocol.json           which config, task, method and protocol the results belong to
    configs/<stage>.py      a stage's config, where the protocol changes the config's hooks
    grid/<values>/          a search run (e.g. P10_lr0.625_wd0.0001), its score.json
    grid/summary.json       every run's score and the best values
    before_pruning/         E²VPT: the best values trained before pruning, trained.json
    importance/scores.json  E²VPT: the importance scores
    rewind/T<t>_S<s>/       E²VPT: a candidate mask's run (t tokens, s pieces per token)
    rewind/summary.json     every candidate's score and the chosen mask
    final/seed<seed>/       a final training, its trained.json, test/ (MMEngine's results)
    final/summary.json      test accuracy per seed, mean, std, every chosen value and every
                            candidate's val score (mmvpt.utils.protocol_results)
"""
import glob
import os
import os.path as osp

from mmvpt.utils.protocol_results import (
    ProtocolError,
    final_summary,
    parameter_counts,
    read_json,
    write_json,
)

from .commands import (
    Launch,
    Unquoted,
    array_script,
    command,
    execute,
    format_command,
    sbatch_command,
)
from .declaration import (
    BENCHMARKS,
    axis_key,
    describe_config,
    parse_cfg_options,
    resolve_protocol,
    value_name,
)

__all__ = ['Launch', 'run_protocol', 'plan_configs']

# The values E²VPT's rewind stage chooses: hook settings, not config keys of their own.
MASK_VALUES = ('masked_tokens', 'masked_pieces')


def option(key, value):
    """One --cfg-options word, as mmengine's DictAction reads it back; a value not chosen yet
    stays shell syntax."""
    if isinstance(value, Unquoted):
        return Unquoted(f'{key}={value}')
    return f'{key}={float(value)!r}' if isinstance(value, float) else f'{key}={value}'


def shell_variable(name):
    return Unquoted('${%s}' % name.upper().replace('.', '_'))


class Context:
    """What the stages of one config's protocol share."""

    def __init__(self, info, protocol, launch, work_dir):
        self.info = info
        self.protocol = protocol
        self.launch = launch
        self.work_dir = work_dir
        self.splits = BENCHMARKS[info['benchmark']]
        self.total_batch = info['batch_size'] * launch.gpus
        self.search_seed = protocol.stage('final').seeds[0]
        self.chosen = {}  # what the stages concluded so far

    @property
    def epochs(self):
        """Of each training: the user's --cfg-options come last on every command line, so
        they win over the protocol's options, which win over the config."""
        key = 'train_cfg.max_epochs'
        user = parse_cfg_options(list(self.launch.cfg_options))
        return user.get(key, self.protocol.options.get(key, self.info['epochs']))

    def chosen_options(self):
        return {axis_key(axis): value for axis, value in self.chosen.items()
                if axis not in MASK_VALUES}

    def run_options(self, *settings, train=None, val=None, test=None, seed=None):
        """--cfg-options of a run: its splits, the protocol's options, ``settings`` (dicts,
        later ones win) and its seed."""
        merged = dict(self.protocol.options)
        for setting in settings:
            merged.update(setting)
        words = [f'{loader}_dataloader.dataset.split={split}'
                 for loader, split in (('train', train), ('val', val), ('test', test)) if split]
        words += [option(key, value) for key, value in merged.items()]
        return words + [f'randomness.seed={seed}']

    def config_for(self, stage, add_hooks=()):
        """(config, index of the first added hook) of a stage's runs: the config itself, or,
        where the protocol drops hooks or the stage adds some, ``configs/<stage>.py``
        inheriting it with those hooks (written when it differs)."""
        hooks = self.info['custom_hooks']
        kept = [hook for hook in hooks if hook.get('type') not in self.protocol.drop_hooks]
        if len(kept) == len(hooks) and not add_hooks:
            return self.info['config'], None
        text = (f'# {self.protocol.name} protocol, stage {stage}: {self.info["config"]} with '
                'the hooks the protocol runs (written by tools/protocol.py)\n'
                f'_base_ = [{osp.abspath(self.info["config"])!r}]\n'
                f'custom_hooks = {kept + list(add_hooks)!r}\n')
        path = osp.join(self.work_dir, 'configs', f'{stage}.py')
        if not osp.isfile(path) or open(path).read() != text:
            os.makedirs(osp.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                f.write(text)
        return path, len(kept)


# --------------------------------------------------------------------------- the work dir

def default_work_dir(info):
    return osp.join('work_dirs', 'protocol', info['method'],
                    osp.splitext(osp.basename(info['config']))[0])


def identity(info, protocol):
    return dict(config=osp.basename(info['config']), task=info['task'],
                benchmark=info['benchmark'], method=info['prompt_type'] or info['method'],
                protocol=protocol.name, fingerprint=info['fingerprint'])


def check_work_dir(work_dir, info, protocol, write):
    """A work dir holds one config's results: another config's (or a changed model,
    optimizer or schedule) is an error, before anything is run or overwritten."""
    path = osp.join(work_dir, 'protocol.json')
    mine = identity(info, protocol)
    if osp.isfile(path):
        theirs = read_json(path)
        differ = [key for key in mine if theirs.get(key) != mine[key]]
        if differ:
            said = ', '.join(f'{key} {theirs.get(key)!r} (now {mine[key]!r})' for key in differ)
            hint = ('the model, optimizer or schedule changed' if differ == ['fingerprint']
                    else 'results of another config')
            raise ProtocolError(f'{work_dir} holds {hint}: {said}; use another --work-dir, or '
                                'move that one away to start again')
    elif write:
        write_json(path, mine)


# ------------------------------------------------------------------------------- running

def run_protocol(config, overrides=None, launch=None, stage='all', work_dir=None):
    """Plans (``launch.print_only``) or runs a config's protocol; returns its final summary
    (None while not every stage has finished) and the plan's counts."""
    launch = launch or Launch()
    info = describe_config(config, launch.cfg_options)
    protocol = resolve_protocol(info, overrides)
    names = [s.name for s in protocol.stages]
    if stage != 'all' and stage not in names:
        raise ProtocolError(f'--stage {stage}: {protocol.name} protocol has the stages '
                            f'{", ".join(names)}')
    work_dir = work_dir or default_work_dir(info)
    check_work_dir(work_dir, info, protocol, write=False)
    ctx = Context(info, protocol, launch, work_dir)
    last = len(names) - 1 if stage == 'all' else names.index(stage)
    first = 0 if stage == 'all' else last
    counts = plan_counts(ctx, protocol.stages[first:last + 1])
    if launch.print_only:
        print_header(ctx, counts)
    for current in protocol.stages[:first]:
        needed(ctx, current, stage)
    if not launch.print_only:  # the work dir is this config's from now on
        check_work_dir(work_dir, info, protocol, write=True)
    for current in protocol.stages[first:last + 1]:
        run_stage(ctx, current)
    summary = None
    if last == len(names) - 1 and not launch.print_only:
        summary = write_final_summary(ctx)
    if launch.print_only:
        print(f'# {plan_total(ctx, counts)}')
    return summary, counts


def needed(ctx, stage, wanted):
    """A stage before the one asked for: its choice, which must be there."""
    chosen = stage.conclude(ctx, write=False)
    if chosen is None:
        chosen = stage.given(ctx)
    if chosen is None:
        if ctx.launch.print_only:
            unknown(ctx, stage)
            return
        raise ProtocolError(
            f'--stage {wanted} needs stage {stage.name} finished '
            f'({osp.join(ctx.work_dir, stage.name)} is not complete); run --stage {stage.name} '
            'first, or --stage all')
    ctx.chosen.update(chosen)


def unknown(ctx, stage):
    """In --print-only mode, what a stage has not chosen yet becomes shell variables."""
    names = stage.chooses()
    ctx.chosen.update({name: shell_variable(name) for name in names})
    if names:
        variables = ', '.join(shell_variable(name)[2:-1] for name in names)
        print(f'# {stage.name}: its choice is not known yet; the commands after this read it '
              f'from the shell variables {variables}: set them to {stage.name}/summary.json\'s '
              f'"best" once its runs are done, or run this tool again then')


def run_stage(ctx, stage):
    launch = ctx.launch
    if launch.print_only:
        print(f'# {stage.describe(ctx)}')
    for number, wave in enumerate(stage.waves(ctx)):
        for run in wave:
            if run.done:
                print(f'# done: {run.work_dir}' if launch.print_only
                      else f'[protocol] skip {run.what}: finished ({run.work_dir})')
        pending = [run for run in wave if not run.done]
        if not pending:
            continue
        job_name = launch.job_name or f'{ctx.info["method"]}-{ctx.info["task"]}'
        commands = [command(launch, run, job_name) for run in pending]
        if launch.array and launch.launcher == 'slurm' and len(pending) > 1:
            run_array(ctx, stage, number, pending, commands, job_name)
        elif launch.print_only:
            for argv, env in commands:
                print(format_command(argv, env))
        else:
            for run, (argv, env) in zip(pending, commands):
                execute(argv, env, run.work_dir, run.what)
                if run.collect is not None:
                    run.collect()
    chosen = stage.conclude(ctx, write=not launch.print_only)
    if chosen is None:
        if not launch.print_only:
            raise ProtocolError(f'stage {stage.name}: its runs finished but left no result in '
                                f'{osp.join(ctx.work_dir, stage.name)}')
        unknown(ctx, stage)
        return
    ctx.chosen.update(chosen)


def run_array(ctx, stage, number, runs, commands, job_name):
    """One Slurm job array for a wave of independent runs; ``sbatch --wait`` returns when
    every task has ended, and each run's result is then read."""
    script = osp.join(ctx.work_dir, stage.name, f'array{number}.sh')
    os.makedirs(osp.dirname(script), exist_ok=True)
    with open(script, 'w') as f:
        f.write(array_script(ctx.launch, commands, job_name))
    argv = sbatch_command(ctx.launch, script, len(runs))
    if ctx.launch.print_only:
        print(f'# {len(runs)} runs as one job array ({script}):')
        print(format_command(argv, {}))
        return
    execute(argv, {}, osp.dirname(script), f'{stage.name}: {len(runs)} runs as a job array')
    failed = []
    for run in runs:
        try:
            run.collect()
        except ProtocolError as err:
            failed.append(f'{run.what}: {err}')
    if failed:
        raise ProtocolError(f'{stage.name}: {len(failed)} of {len(runs)} array runs left no '
                            'result; run this tool again to retry them:\n  ' + '\n  '.join(failed))


# ------------------------------------------------------------------------------ the plan

def plan_counts(ctx, stages):
    """{stage: (trainings, scoring passes, tests)} of the stages to run."""
    return {stage.name: stage.count(ctx) for stage in stages}


def print_header(ctx, counts):
    info, protocol = ctx.info, ctx.protocol
    title = BENCHMARKS[info['benchmark']]['title']
    print(f"# {protocol.name} protocol for {info['config']} ({info['method_name']}, {title} "
          f"{info['task']})")
    if protocol.source:
        print(f'#   as its authors ran it: {protocol.source}')
    if protocol.note:
        print(f'#   note: {protocol.note}')
    if protocol.options or protocol.drop_hooks:
        settings = [f'{key}={value_name(value)}' for key, value in protocol.options.items()]
        settings += [f'without {hook}' for hook in protocol.drop_hooks]
        print(f'#   every run: {", ".join(settings)}')


def plan_total(ctx, counts):
    info = ctx.info
    trainings = [c[0] for c in counts.values() if c[0]]
    total = sum(trainings)
    passes = sum(c[1] for c in counts.values())
    tests = sum(c[2] for c in counts.values())
    parts = f'{" + ".join(map(str, trainings))} = {total}' if len(trainings) > 1 else str(total)
    epochs = f' ({total * ctx.epochs:,} epochs)' if ctx.epochs else ''
    extra = ''.join(f', {n} {what}{"es" if what.endswith("pass") and n != 1 else ""}'
                    f'{"s" if what == "test" and n != 1 else ""}'
                    for n, what in ((passes, 'scoring pass'), (tests, 'test')) if n)
    return (f'{info["method_name"]}, {BENCHMARKS[info["benchmark"]]["title"]} {info["task"]} '
            f'({osp.basename(info["config"])}): {parts} trainings{epochs}{extra}')


def plan_configs(paths):
    """Config files of ``paths``: files as given, folders' VTAB-1k and FGVC configs sorted
    (others in them are skipped: a method's folder also holds its segmentation config)."""
    configs = []
    for path in paths:
        if osp.isdir(path):
            found = sorted(glob.glob(osp.join(path, '*_vtab-*.py')) +
                           glob.glob(osp.join(path, '*_fgvc-*.py')))
            if not found:
                raise ProtocolError(f'{path}: no *_vtab-*.py or *_fgvc-*.py config in it')
            configs += found
        else:
            configs.append(path)
    return configs


# ------------------------------------------------------------------------------- summary

def write_final_summary(ctx):
    """``final/summary.json``: the seeds' test accuracies, every value chosen and every
    candidate's val score."""
    final = ctx.protocol.stage('final')
    accuracies = final.accuracies(ctx)
    values = final.values(ctx)
    tuned, total = parameter_counts(osp.join(ctx.work_dir, 'final', f'seed{final.seeds[0]}'))
    info = dict(ctx.info)
    if 'num_tokens' in values:
        info['num_tokens'] = values['num_tokens']
    lr = values.get('lr', info['lr'])
    wd = values.get('wd', info['wd'])
    searched = ctx.protocol.stage('grid') is not None
    sources = ('explicit' if final.lr is not None else 'grid' if searched else 'config',
               'explicit' if final.wd is not None else 'grid' if searched else 'config')
    lr_source = sources[0] if sources[0] == sources[1] else '+'.join(dict.fromkeys(sources))
    summary = final_summary(info, ctx.splits, lr, wd, lr_source, accuracies, tuned, total,
                            ctx.work_dir)
    candidates = {}
    for stage in ctx.protocol.stages:
        path = osp.join(ctx.work_dir, stage.name, 'summary.json')
        if stage.name != 'final' and osp.isfile(path):
            candidates[stage.name] = [
                dict(values=run.get('values') or {k: run[k] for k in ('tokens', 'pieces')},
                     score=run['score']) for run in read_json(path)['runs']]
    summary.update(protocol=dict(name=ctx.protocol.name, source=ctx.protocol.source,
                                 note=ctx.protocol.note),
                   chosen=dict(values, lr=lr, wd=wd),
                   candidates=candidates)
    path = osp.join(ctx.work_dir, 'final', 'summary.json')
    write_json(path, summary)
    print(f'[protocol] final: {summary["metric"]} {summary["mean"]:.2f} +- {summary["std"]:.2f} '
          f'over {len(final.seeds)} seeds; tuned {summary["tuned_percent"]:.4f}%; {path}')
    return summary


__all__ += ['Context', 'check_work_dir', 'default_work_dir']
