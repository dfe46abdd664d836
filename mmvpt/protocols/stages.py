"""The kinds of protocol stage: what each one runs, where it keeps its results, and how it
chooses.

A stage yields *waves* of :class:`Run` s, runs of a wave being independent of each other (a
Slurm array each); a run with a result file is done and not run again. Once every run has
its result, :meth:`Stage.conclude` chooses (the search's best values, E²VPT's mask) and
returns what it chose, which the stages after it train with (``ctx.chosen``) and the final
summary records.
"""
import dataclasses
import inspect
import itertools
import math
import os.path as osp
import shlex

from mmvpt.engine.e2vpt_pruning import (
    MIN_PIECES,
    MIN_TOKENS,
    OFFICIAL_FRACTIONS,
    best_candidate,
    candidate_counts,
)
from mmvpt.models.prompts import E2VPT
from mmvpt.utils.protocol_results import (
    METRIC,
    ProtocolError,
    best_validation,
    last_checkpoint,
    last_validation,
    read_json,
    test_accuracy,
    write_json,
)

from .commands import Unquoted
from .declaration import SCORES, axis_key, axis_label, check_fractions, value_name


@dataclasses.dataclass
class Run:
    """One job: a training (``train``), a test of a checkpoint (``test``) or E²VPT's scoring
    pass (``score``)."""
    kind: str
    what: str
    work_dir: str
    config: str
    options: list
    done: bool                   # its result is there: not run again
    collect: object = None       # () -> None: reads what the run left, writes its result
    validate: bool = True
    checkpoint: str = None
    out: str = None


class Stage:
    """A protocol stage; ``name`` is its folder in the work dir and its --stage value."""
    name = None

    def waves(self, ctx):
        """Yields lists of independent :class:`Run` s, in order; a later wave may read the
        results of an earlier one."""
        raise NotImplementedError

    def conclude(self, ctx, write):
        """What the stage chose, once every run has its result (else None); ``write``: also
        write the stage's summary."""
        raise NotImplementedError

    def describe(self, ctx):
        """The plan's line for the stage: its runs and what decides."""
        raise NotImplementedError

    def count(self, ctx):
        """(trainings, scoring passes, tests) of the stage."""
        raise NotImplementedError

    def chooses(self):
        """The names of the values :meth:`conclude` chooses."""
        return []

    def given(self, ctx):
        """What the stage would choose, where the command line already fixes all of it
        (the stage is then not needed), else None."""
        return None

    def final_hooks(self, ctx):
        """Hooks the final runs need for what this stage chose."""
        return []

    def final_options(self, ctx, values, hook_index):
        """Config settings of the final runs for what this stage chose (``values``: every
        chosen value; ``hook_index``: where this stage's :meth:`final_hooks` are in
        ``custom_hooks``): by default each chosen value at its axis's key."""
        return {axis_key(name): values[name] for name in self.chooses() if name in values}

    def folder(self, ctx, *parts):
        return osp.join(ctx.work_dir, self.name, *parts)


# --------------------------------------------------------------------------------- search

class SearchStage(Stage):
    """Every combination of the axes' values trained on train -> val; the best score wins."""
    name = 'grid'

    def __init__(self, space, scale_lr=True, score='last', prefer=(), options=None):
        if not space:
            raise ValueError('a search needs a space of at least one axis')
        if score not in SCORES:
            raise ValueError(f'score={score!r}: one of {SCORES}')
        self.space = {axis: list(values) for axis, values in space.items()}
        for axis, values in self.space.items():
            if not values:
                raise ValueError(f'axis {axis!r} has no values')
        unknown = set(prefer) - set(self.space)
        if unknown:
            raise ValueError(f'prefer names axes the space has not: {sorted(unknown)}')
        self.scale_lr = scale_lr
        self.score = score
        self.prefer = tuple(prefer)
        self.options = dict(options or {})

    def set_axis(self, axis, values):
        """Values from the command line: lrs are absolute there."""
        if axis not in self.space:
            self.space = {axis: None, **self.space}  # a new axis goes outermost
            self.prefer += (axis, )
        self.space[axis] = list(values)
        if axis == 'lr':
            self.scale_lr = False

    def points(self, ctx):
        """The runs' values ({axis: value}), first axis outermost: the order that breaks
        the last ties."""
        space = dict(self.space)
        if self.scale_lr and 'lr' in space:
            space['lr'] = [float(f'{lr * ctx.total_batch / 256:.12g}') for lr in space['lr']]
        points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
        names = [self.run_name(point) for point in points]
        if len(set(names)) != len(names):
            raise ProtocolError(f'search values repeat: the same run twice in {names}')
        return points

    @staticmethod
    def run_name(point):
        return '_'.join(f'{axis_label(axis)}{value_name(value)}' for axis, value in point.items())

    def waves(self, ctx):
        splits = ctx.splits
        runs = []
        for point in self.points(ctx):
            run_dir = self.folder(ctx, self.run_name(point))
            options = ctx.run_options(self.options, {axis_key(a): v for a, v in point.items()},
                                      train=splits['train'], val=splits['val'],
                                      seed=ctx.search_seed)
            if self.score == 'best':  # the best epoch needs every epoch's validation
                options.append('train_cfg.val_interval=1')
            runs.append(Run('train', f'grid run {self.run_name(point)}', run_dir,
                            ctx.config_for(self.name)[0], options,
                            osp.isfile(osp.join(run_dir, 'score.json')),
                            collect=self.collector(ctx, point, run_dir)))
        yield runs

    def collector(self, ctx, point, run_dir):
        def collect():
            read = best_validation if self.score == 'best' else last_validation
            score, step, scalars = read(run_dir)
            write_json(osp.join(run_dir, 'score.json'), dict(
                values=point, **{a: v for a, v in point.items() if a in ('lr', 'wd')},
                seed=ctx.search_seed, score=score, step=step, scalars=scalars,
                work_dir=run_dir))
        return collect

    def conclude(self, ctx, write):
        runs = []
        for point in self.points(ctx):
            score_file = self.folder(ctx, self.run_name(point), 'score.json')
            if not osp.isfile(score_file):
                return None
            run = read_json(score_file)
            run.setdefault('values', point)  # written by the VPT-only protocol before
            runs.append(run)
        best = self.best(runs)
        if write:
            summary = dict(
                config=ctx.info['config'], method=ctx.info['method'],
                benchmark=ctx.info['benchmark'], task=ctx.info['task'], metric=METRIC,
                score=self.score, prefer=list(self.prefer), seed=ctx.search_seed,
                train_split=ctx.splits['train'], val_split=ctx.splits['val'],
                batch_size=ctx.total_batch, space={a: list(v) for a, v in self.space.items()},
                lrs=list(dict.fromkeys(p['lr'] for p in self.points(ctx)))
                if 'lr' in self.space else None,
                wds=list(self.space['wd']) if 'wd' in self.space else None,
                runs=runs, best=dict(best['values'], score=best['score']))
            write_json(self.folder(ctx, 'summary.json'), summary)
            print('[protocol] grid done: best '
                  + ', '.join(f'{axis_label(a)} {value_name(v)}' for a, v in best['values'].items())
                  + f' ({METRIC} {best["score"]:.2f}); {self.folder(ctx, "summary.json")}')
        return dict(best['values'])

    def best(self, runs):
        """The highest score; among equals the smaller value of each ``prefer`` axis in turn,
        then the first in run order (Python's sort is stable)."""
        def key(run):
            return (-run['score'], *(run['values'][axis] for axis in self.prefer))
        return sorted(runs, key=key)[0]

    def count(self, ctx):
        return len(self.points(ctx)), 0, 0

    def chooses(self):
        return list(self.space)

    def given(self, ctx):
        """--lr / --wd for the final runs, and axes searched over one value only."""
        final = ctx.protocol.stage('final')
        point = self.points(ctx)[0]
        values = {}
        for axis in self.space:
            if axis in ('lr', 'wd') and getattr(final, axis) is not None:
                values[axis] = getattr(final, axis)
            elif len(self.space[axis]) == 1:
                values[axis] = point[axis]
            else:
                return None
        return values

    def describe(self, ctx):
        axes = ' x '.join(f'{len(v)} {axis_label(a)}' for a, v in self.space.items())
        prefer = ''.join(f', then the smaller {axis_label(a)}' for a in self.prefer)
        scaled = ' (base values x batch / 256)' if self.scale_lr and 'lr' in self.space else ''
        values = '; '.join(f'{axis_label(a)} {" ".join(map(value_name, v))}'
                           for a, v in self.space.items())
        epoch = 'last' if self.score == 'last' else 'best'
        return (f'grid: {len(self.points(ctx))} trainings ({axes}: {values}{scaled}), '
                f'train on {ctx.splits["train"]} -> validate on {ctx.splits["val"]}, seed '
                f'{ctx.search_seed}; the highest {epoch}-epoch val score wins, ties going to '
                f'{prefer[len(", then "):] + ", then " if prefer else ""}the first run')


# -------------------------------------------------------------------- E²VPT's pruning

@dataclasses.dataclass
class Pruning:
    """E²VPT's pruning settings, shared by its three stages."""
    token_fractions: list
    piece_fractions: list
    min_tokens: int = MIN_TOKENS
    min_pieces: int = MIN_PIECES

    def candidates(self, num_tokens, num_pieces):
        """(masked tokens, masked pieces per token) of every rewind run, token count outer."""
        tokens = candidate_counts(num_tokens, self.token_fractions, self.min_tokens)
        pieces = candidate_counts(num_pieces, self.piece_fractions, self.min_pieces)
        return [(t, s) for t in tokens for s in pieces]


def e2vpt_shape(ctx):
    """(P visual prompts, R pieces per prompt) of the config's E²VPT."""
    prompt = ctx.info['prompt'] or {}
    if prompt.get('type') not in ('mmvpt.E2VPT', 'E2VPT'):
        raise ProtocolError(f"{ctx.info['config']}: the pruning stages prune E2VPT's visual "
                            f"prompts; the config's method is {prompt.get('type')!r}")
    defaults = {name: p.default for name, p in inspect.signature(E2VPT).parameters.items()}
    tokens = prompt.get('num_tokens', defaults['num_tokens'])
    pieces = prompt.get('num_segments', defaults['num_segments'])
    if not tokens:
        raise ProtocolError(f"{ctx.info['config']}: E2VPT with num_tokens=0 has no visual "
                            'prompts to prune')
    return tokens, pieces


class BeforePruningStage(Stage):
    """E²VPT's stage 2: the search's best values trained once on train -> val (the masks
    learned, as the official model's are); its last checkpoint is scored."""
    name = 'before_pruning'

    def __init__(self, pruning):
        self.pruning = pruning

    def waves(self, ctx):
        run_dir = self.folder(ctx)
        options = ctx.run_options(LEARNED_MASKS, ctx.chosen_options(), train=ctx.splits['train'],
                                  val=ctx.splits['val'], seed=ctx.search_seed)

        def collect():
            write_json(osp.join(run_dir, 'trained.json'),
                       dict(ctx.chosen, checkpoint=last_checkpoint(run_dir)))
        yield [Run('train', 'training before pruning', run_dir, ctx.config_for(self.name)[0],
                   options, osp.isfile(osp.join(run_dir, 'trained.json')), collect=collect)]

    def conclude(self, ctx, write):
        trained = self.folder(ctx, 'trained.json')
        return {} if osp.isfile(trained) else None

    def checkpoint(self, ctx):
        trained = self.folder(ctx, 'trained.json')
        if osp.isfile(trained):
            return read_json(trained)['checkpoint']
        return Unquoted(f'"$(cat {shlex.quote(self.folder(ctx, "last_checkpoint"))})"')

    def count(self, ctx):
        return 1, 0, 0

    def describe(self, ctx):
        return (f'before_pruning: 1 training with the grid\'s best values, train on '
                f'{ctx.splits["train"]} -> validate on {ctx.splits["val"]}, the masks learned')


# The official model learns its token and piece masks until pruning (E2VPT learn_masks).
LEARNED_MASKS = {'model.backbone.prompt.learn_masks': True}


class ImportanceStage(Stage):
    """E²VPT's stage 3: one pass over the train split with the before-pruning weights, the
    signed mean gradient of each token's and piece's mask (``calculate_importance``)."""
    name = 'importance'

    def __init__(self, pruning, before):
        self.pruning = pruning
        self.before = before

    def scores_file(self, ctx):
        return self.folder(ctx, 'scores.json')

    def waves(self, ctx):
        options = ctx.run_options(LEARNED_MASKS, train=ctx.splits['train'], seed=ctx.search_seed)
        yield [Run('score', 'importance scores', self.folder(ctx), ctx.config_for(self.name)[0],
                   options, osp.isfile(self.scores_file(ctx)),
                   checkpoint=self.before.checkpoint(ctx),
                   out=self.scores_file(ctx))]

    def conclude(self, ctx, write):
        return {} if osp.isfile(self.scores_file(ctx)) else None

    def count(self, ctx):
        return 0, 1, 0

    def describe(self, ctx):
        return (f'importance: 1 scoring pass over {ctx.splits["train"]} (eval mode, the signed '
                'mean gradient of each token and piece mask)')


class RewindStage(Stage):
    """E²VPT's stage 4-5: a candidate mask per (token count, piece count), each trained from
    a fresh init with its mask fixed (train -> val); the best last validation wins
    (``find_best_MtMtp``: ties to more masked tokens, then, ours, more masked pieces)."""
    name = 'rewind'

    def __init__(self, pruning, importance):
        self.pruning = pruning
        self.importance = importance

    def mask_hook(self, ctx):
        return dict(type='mmvpt.PromptMaskHook', scores=self.importance.scores_file(ctx),
                    tokens=0, pieces=0)

    def candidates(self, ctx):
        return self.pruning.candidates(*e2vpt_shape(ctx))

    @staticmethod
    def run_name(tokens, pieces):
        return f'T{tokens}_S{pieces}'

    def waves(self, ctx):
        runs = []
        config, hook_index = ctx.config_for(self.name, add_hooks=[self.mask_hook(ctx)])
        for tokens, pieces in self.candidates(ctx):
            run_dir = self.folder(ctx, self.run_name(tokens, pieces))
            options = ctx.run_options(
                MASKED, ctx.chosen_options(), {f'custom_hooks.{hook_index}.tokens': tokens,
                                               f'custom_hooks.{hook_index}.pieces': pieces},
                train=ctx.splits['train'], val=ctx.splits['val'], seed=ctx.search_seed)
            runs.append(Run('train', f'rewind run {self.run_name(tokens, pieces)}', run_dir,
                            config, options, osp.isfile(osp.join(run_dir, 'score.json')),
                            collect=self.collector(ctx, tokens, pieces, run_dir)))
        yield runs

    def collector(self, ctx, tokens, pieces, run_dir):
        def collect():
            score, step, scalars = last_validation(run_dir)
            write_json(osp.join(run_dir, 'score.json'), dict(
                tokens=tokens, pieces=pieces, score=score, step=step, scalars=scalars,
                work_dir=run_dir))
        return collect

    def conclude(self, ctx, write):
        if not osp.isfile(self.importance.scores_file(ctx)):
            return None
        runs = []
        for tokens, pieces in self.candidates(ctx):
            score_file = self.folder(ctx, self.run_name(tokens, pieces), 'score.json')
            if not osp.isfile(score_file):
                return None
            runs.append(read_json(score_file))
        best = best_candidate(runs)
        if write:
            write_json(self.folder(ctx, 'summary.json'), dict(
                config=ctx.info['config'], task=ctx.info['task'], metric=METRIC,
                scores=self.importance.scores_file(ctx), runs=runs,
                best=dict(tokens=best['tokens'], pieces=best['pieces'], score=best['score'])))
            print(f'[protocol] rewind done: mask {best["tokens"]} tokens and {best["pieces"]} '
                  f'pieces per token ({METRIC} {best["score"]:.2f})')
        return dict(masked_tokens=best['tokens'], masked_pieces=best['pieces'])

    def final_hooks(self, ctx):
        return [self.mask_hook(ctx)]

    def final_options(self, ctx, values, hook_index):
        return {**MASKED, f'custom_hooks.{hook_index}.tokens': values['masked_tokens'],
                f'custom_hooks.{hook_index}.pieces': values['masked_pieces']}

    def count(self, ctx):
        return len(self.candidates(ctx)), 0, 0

    def chooses(self):
        return ['masked_tokens', 'masked_pieces']

    def describe(self, ctx):
        tokens, pieces = e2vpt_shape(ctx)
        counts = [candidate_counts(tokens, self.pruning.token_fractions, self.pruning.min_tokens),
                  candidate_counts(pieces, self.pruning.piece_fractions, self.pruning.min_pieces)]
        return (f'rewind: {len(self.candidates(ctx))} trainings ({len(counts[0])} token counts '
                f'{counts[0]} of {tokens} x {len(counts[1])} piece counts {counts[1]} of '
                f'{pieces}, at least {self.pruning.min_tokens} token and '
                f'{self.pruning.min_pieces} pieces kept), each from a fresh init with its mask '
                f'fixed, train on {ctx.splits["train"]} -> validate on {ctx.splits["val"]}; the '
                'highest last-epoch val score wins, ties going to more masked tokens, then more '
                'masked pieces')


# Pruned prompts are zeroed and stay in the sequence, as in the official code.
MASKED = {'model.backbone.prompt.prune_mode': 'mask'}


def build_prune(spec, info):
    spec = dict(spec)
    pruning = Pruning(
        token_fractions=check_fractions('token_fractions',
                                        spec.pop('token_fractions', OFFICIAL_FRACTIONS)),
        piece_fractions=check_fractions('piece_fractions',
                                        spec.pop('piece_fractions', OFFICIAL_FRACTIONS)),
        min_tokens=spec.pop('min_tokens', MIN_TOKENS),
        min_pieces=spec.pop('min_pieces', MIN_PIECES))
    if spec:
        raise ValueError(f'unknown settings {sorted(spec)}')
    before = BeforePruningStage(pruning)
    importance = ImportanceStage(pruning, before)
    return [before, importance, RewindStage(pruning, importance)]


# ---------------------------------------------------------------------------------- final

class FinalStage(Stage):
    """Training on the final split once per seed with the chosen values (or the config's),
    each last checkpoint tested once."""
    name = 'final'

    def __init__(self, seeds, train_split=None):
        if not seeds:
            raise ValueError('the final stage needs at least one seed')
        self.seeds = list(seeds)
        self.train_split = train_split  # None: the benchmark's final split
        self.lr = self.wd = None  # --lr / --wd

    def split(self, ctx):
        return self.train_split or ctx.splits['final_train']

    def values(self, ctx):
        """What the seeds train with: the earlier stages' choices, --lr / --wd over them."""
        chosen = dict(ctx.chosen)
        for axis in ('lr', 'wd'):
            if getattr(self, axis) is not None:
                chosen[axis] = getattr(self, axis)
        return chosen

    def setup(self, ctx):
        """(config, config settings) of the final trainings and tests: what the stages
        before chose, as each of them says it is set."""
        before = ctx.protocol.stages[:ctx.protocol.stages.index(self)]
        hooks, starts = [], []
        for stage in before:
            starts.append(len(hooks))
            hooks += stage.final_hooks(ctx)
        config, first = ctx.config_for(self.name, add_hooks=hooks)
        values = self.values(ctx)
        options = {}
        for stage, start in zip(before, starts):
            index = None if first is None else first + start
            options.update(stage.final_options(ctx, values, index))
        for axis in ('lr', 'wd'):  # --lr / --wd, also where nothing searched them
            if getattr(self, axis) is not None:
                options[axis_key(axis)] = getattr(self, axis)
        return config, options

    def waves(self, ctx):
        config, options = self.setup(ctx)
        trainings = []
        for seed in self.seeds:
            seed_dir = self.folder(ctx, f'seed{seed}')
            trained = osp.join(seed_dir, 'trained.json')
            if osp.isfile(trained):
                check_same_values(read_json(trained), self.values(ctx), seed_dir)
            if test_accuracy(osp.join(seed_dir, 'test')) is not None:
                trainings.append(Run('train', f'seed {seed}, trained and tested', seed_dir,
                                     config, [], True))
                continue
            trainings.append(Run(
                'train', f'final training, seed {seed}', seed_dir, config,
                ctx.run_options(options, train=self.split(ctx), seed=seed),
                osp.isfile(trained), validate=False,
                collect=self.trained_collector(ctx, seed_dir, seed)))
        yield trainings
        tests = []
        for seed in self.seeds:
            seed_dir = self.folder(ctx, f'seed{seed}')
            test_dir = osp.join(seed_dir, 'test')
            trained = osp.join(seed_dir, 'trained.json')
            if test_accuracy(test_dir) is not None:
                continue
            checkpoint = (read_json(trained)['checkpoint'] if osp.isfile(trained) else Unquoted(
                f'"$(cat {shlex.quote(osp.join(seed_dir, "last_checkpoint"))})"'))
            tests.append(Run(
                'test', f'test, seed {seed}', test_dir, config,
                ctx.run_options(options, test=ctx.splits['test'], seed=seed),
                False, checkpoint=checkpoint,
                collect=self.test_collector(test_dir, seed)))
        yield tests

    def trained_collector(self, ctx, seed_dir, seed):
        def collect():
            values = self.values(ctx)
            write_json(osp.join(seed_dir, 'trained.json'),
                       dict(values, seed=seed, checkpoint=last_checkpoint(seed_dir)))
        return collect

    @staticmethod
    def test_collector(test_dir, seed):
        def collect():
            if test_accuracy(test_dir) is None:
                raise ProtocolError(f'test, seed {seed}: finished but left no <ts>/<ts>.json in '
                                    f'{test_dir}')
        return collect

    def accuracies(self, ctx):
        found = {}
        for seed in self.seeds:
            accuracy = test_accuracy(self.folder(ctx, f'seed{seed}', 'test'))
            if accuracy is None:
                return None
            found[seed] = accuracy
        return found

    def conclude(self, ctx, write):
        return {} if self.accuracies(ctx) is not None else None

    def count(self, ctx):
        return len(self.seeds), 0, len(self.seeds)

    def describe(self, ctx):
        values = self.values(ctx)
        given = ', '.join(f'{axis_label(a)} {value_name(v)}' for a, v in values.items()
                          if not isinstance(v, Unquoted))
        chosen = f' with {given}' if given else ''
        return (f'final: {len(self.seeds)} trainings + {len(self.seeds)} tests{chosen}, train '
                f'on {self.split(ctx)} (no validation) -> test on {ctx.splits["test"]}, '
                f'seeds {" ".join(map(str, self.seeds))}')


def check_same_values(trained, values, seed_dir):
    """A finished seed run is reused only for the values it was trained with."""
    for axis, value in values.items():
        if isinstance(value, Unquoted) or axis not in trained:
            continue
        same = (math.isclose(trained[axis], value) if isinstance(value, float)
                else trained[axis] == value)
        if not same:
            raise ProtocolError(
                f'{seed_dir} was trained with {axis_label(axis)} {value_name(trained[axis])}, '
                f'not {value_name(value)}; remove it or use another --work-dir')


def build_stage(kind, spec, info):
    """The stage objects of one declared stage (``type`` popped into ``kind``)."""
    if kind == 'search':
        return [SearchStage(**spec)]
    if kind == 'prune':
        return build_prune(spec, info)
    if kind == 'final':
        return [FinalStage(**spec)]
    raise ValueError("unknown stage type; one of 'search', 'prune', 'final'")


__all__ = ['Run', 'Stage', 'SearchStage', 'BeforePruningStage', 'ImportanceStage',
           'RewindStage', 'FinalStage', 'build_stage']
