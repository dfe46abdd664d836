"""The results of the protocols (``tools/protocol.py``, :mod:`mmvpt.protocols`) in one place:
reading what their runs leave (MMEngine's logs, scalars and test results), the final
``summary.json`` they write, and reading it back (``tools/analysis/report.py``).

``grid/summary.json`` (a search): config, method, benchmark, task, metric, score ('last' or
'best' validation), prefer, seed, train_split, val_split, batch_size, space ({axis:
values}), lrs, wds, runs (values, lr, wd, seed, score, step, scalars, work_dir of each) and
best (the values and the score). ``rewind/summary.json`` (E²VPT): runs (tokens, pieces,
score, ...) and best.

``final/summary.json``: config, method (the config's folder, e.g. ``cvpt``), method_name
(:func:`~mmvpt.models.prompts.display_name`: ``CVPT``), prompt_type (``mmvpt.CVPT``; None
without a prompt method), num_tokens (P, ``model.backbone.prompt.num_tokens``; None
without), benchmark, task, metric, lr, wd, lr_source, train_split, test_split, seeds,
test_accuracy ({seed: accuracy}), mean, std (over the seeds, n - 1), tuned_params,
total_params, tuned_percent, work_dir; protocol (name, source, note), chosen (every value the
final runs trained with: lr, wd, P where searched, E²VPT's masked_tokens / masked_pieces) and
candidates ({stage: [{values, score}]}: every candidate's val score).

Final summaries written before method_name and num_tokens were recorded read as they did:
the name from the method's folder (:func:`method_folders`), P from the config MMEngine
saved for the first seed's run (:func:`prompt_count`).
"""
import glob
import json
import os
import os.path as osp
import re
import statistics
import sys

METRIC = 'accuracy/top1'
TIMESTAMP_DIR = re.compile(r'^\d{8}_\d{6}$')
TUNED_LINE = re.compile(r'tuned parameters: ([\d,]+) of ([\d,]+)')



def method_folders():
    """The method of each method folder of configs/ (prompt type, frozen backbone), in the
    report's row order: what a summary that does not record its method is read as (derived
    from the registered methods: :func:`mmvpt.models.methods.method_folders`)."""
    from mmvpt.models.methods import method_folders as folders
    return folders()


class ProtocolError(RuntimeError):
    """A problem the user can fix: a config, an option or a failed run, named."""


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, data):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
        f.write('\n')


# -- what the runs leave --------------------------------------------------------------------
def timestamp_dirs(work_dir):
    """MMEngine's per-launch ``<work_dir>/<YYYYMMDD_HHMMSS>/`` folders, oldest first."""
    if not osp.isdir(work_dir):
        return []
    return sorted(osp.join(work_dir, name) for name in os.listdir(work_dir)
                  if TIMESTAMP_DIR.match(name) and osp.isdir(osp.join(work_dir, name)))


def newest_log(work_dir):
    for run_dir in reversed(timestamp_dirs(work_dir)):
        log = osp.join(run_dir, osp.basename(run_dir) + '.log')
        if osp.isfile(log):
            return log
    return None


def validations(work_dir, metric=METRIC):
    """(every validation of the newest launch in ``work_dir``: the lines of its
    vis_data/scalars.json that hold ``metric``, the scalars file)."""
    for run_dir in reversed(timestamp_dirs(work_dir)):
        scalars = osp.join(run_dir, 'vis_data', 'scalars.json')
        if not osp.isfile(scalars):
            continue
        with open(scalars) as f:
            lines = [json.loads(line) for line in f if metric in line]
        lines = [line for line in lines if metric in line]
        if lines:
            return lines, scalars
        raise ProtocolError(f'{scalars}: no {metric} line; the run validated never '
                            '(check train_cfg.val_interval and val_dataloader)')
    raise ProtocolError(f'{work_dir}: no vis_data/scalars.json from a training run')


def last_validation(work_dir, metric=METRIC):
    """(score, step, scalars file) of the last validation of the newest launch in
    ``work_dir``."""
    lines, scalars = validations(work_dir, metric)
    return float(lines[-1][metric]), lines[-1].get('step'), scalars


def best_validation(work_dir, metric=METRIC):
    """(score, step, scalars file) of the best validation of the newest launch in
    ``work_dir`` (the first of equals)."""
    lines, scalars = validations(work_dir, metric)
    best = max(lines, key=lambda line: float(line[metric]))
    return float(best[metric]), best.get('step'), scalars


def test_accuracy(test_dir, metric=METRIC):
    """``metric`` of the newest ``<test_dir>/<ts>/<ts>.json`` (what tools/test.py leaves),
    or None where no test finished."""
    for run_dir in reversed(timestamp_dirs(test_dir)):
        result = osp.join(run_dir, osp.basename(run_dir) + '.json')
        if osp.isfile(result):
            metrics = read_json(result)
            if metric not in metrics:
                raise ProtocolError(f'{result} has no {metric}: {sorted(metrics)}')
            return float(metrics[metric])
    return None


def parameter_counts(work_dir):
    """(tuned, total) from the last 'tuned parameters: N of M' line of the newest training
    log; with E2VPT pruning that is the count after pruning."""
    log = newest_log(work_dir)
    if log is None:
        raise ProtocolError(f'{work_dir}: no training log')
    with open(log) as f:
        matches = TUNED_LINE.findall(f.read())
    if not matches:
        raise ProtocolError(f'{log}: no "tuned parameters" line (ParameterReportHook)')
    tuned, total = (int(n.replace(',', '')) for n in matches[-1])
    return tuned, total


def last_checkpoint(work_dir):
    """The checkpoint ``work_dir/last_checkpoint`` names, which must exist."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        raise ProtocolError(f'{work_dir}: training finished but wrote no last_checkpoint')
    with open(pointer) as f:
        checkpoint = f.read().strip()
    if not osp.isfile(checkpoint):
        raise ProtocolError(f'{pointer} points at {checkpoint}, which does not exist')
    return checkpoint


# -- the summaries ------------------------------------------------------------------------
def _backbone_and_prompt(model_cfg):
    """(backbone config, prompt config or None) of a config's ``model``."""
    backbone = model_cfg.get('backbone') if isinstance(model_cfg, dict) else None
    backbone = backbone if isinstance(backbone, dict) else {}
    prompt = backbone.get('prompt')
    return backbone, prompt if isinstance(prompt, dict) else None


def _num_tokens(prompt):
    tokens = prompt.get('num_tokens') if prompt is not None else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


def method_record(model_cfg):
    """What a final summary records of the method of a config's ``model``: method_name,
    prompt_type and num_tokens (P)."""
    from mmvpt.models.prompts import display_name
    backbone, prompt = _backbone_and_prompt(model_cfg)
    return dict(method_name=display_name(prompt, frozen=backbone.get('frozen', True)),
                prompt_type=prompt.get('type') if prompt is not None else None,
                num_tokens=_num_tokens(prompt))


def final_summary(info, splits, lr, wd, lr_source, accuracies, tuned, total, work_dir):
    """``final/summary.json`` of a config (``info``: config, method, benchmark, task and
    its :func:`method_record`) trained with ``lr`` / ``wd`` and tested with the test
    ``accuracies`` ({seed: accuracy}, in seed order)."""
    values = list(accuracies.values())
    return dict(
        config=info['config'], method=info['method'], method_name=info['method_name'],
        prompt_type=info['prompt_type'], num_tokens=info['num_tokens'],
        benchmark=info['benchmark'], task=info['task'], metric=METRIC, lr=lr, wd=wd,
        lr_source=lr_source, train_split=splits['final_train'], test_split=splits['test'],
        seeds=list(accuracies), test_accuracy={str(seed): a for seed, a in accuracies.items()},
        mean=statistics.fmean(values),
        # sample standard deviation over the seeds (n - 1); 0 for a single seed
        std=statistics.stdev(values) if len(values) > 1 else 0.,
        tuned_params=tuned, total_params=total, tuned_percent=100. * tuned / total,
        work_dir=work_dir)


def find_summaries(work_dirs):
    """Every ``final/summary.json`` under ``work_dirs``, each file once. A work dir that is
    not a folder is a ValueError."""
    found = set()
    for work_dir in work_dirs:
        if not osp.isdir(work_dir):
            raise ValueError(f'{work_dir} is not a folder')
        for root, _, files in os.walk(work_dir):
            if osp.basename(root) == 'final' and 'summary.json' in files:
                found.add(osp.realpath(osp.join(root, 'summary.json')))
    return sorted(found)


def read_summary(path):
    """A ``final/summary.json`` with method_name and num_tokens filled in for summaries that
    do not record them (see the module's docstring)."""
    summary = read_json(path)
    if 'method_name' not in summary:
        folder = summary.get('method')
        folders = method_folders()
        if folder in folders:
            from mmvpt.models.prompts import display_name
            prompt_type, frozen = folders[folder]
            summary['method_name'] = display_name(prompt_type, frozen=frozen)
        else:
            summary['method_name'] = folder
    if 'num_tokens' not in summary:
        summary['num_tokens'] = prompt_count(path, summary)
    return summary


def saved_config(summary_path, summary):
    """The config MMEngine saved for the first final run of a summary that has one:
    ``final/seed<seed>/<config file name>`` (Runner.dump_config, written at the start of
    every run with the --cfg-options merged in), else the newest
    ``final/seed<seed>/<timestamp>/vis_data/config.py``; None if there is none."""
    final_dir = osp.dirname(summary_path)
    name = osp.basename(str(summary.get('config') or ''))
    for seed in summary.get('seeds') or []:
        seed_dir = osp.join(final_dir, f'seed{seed}')
        if name.endswith('.py') and osp.isfile(osp.join(seed_dir, name)):
            return osp.join(seed_dir, name)
        dumped = sorted(glob.glob(osp.join(glob.escape(seed_dir), '*', 'vis_data', 'config.py')))
        if dumped:
            return dumped[-1]
    return None


def prompt_count(summary_path, summary):
    """P of a result: its recorded ``num_tokens``, else ``model.backbone.prompt.num_tokens``
    of its saved config (:func:`saved_config`); None where there is no saved config or no
    prompt (full fine-tuning, linear probing)."""
    if 'num_tokens' in summary:
        return summary['num_tokens']
    config = saved_config(summary_path, summary)
    if config is None:
        return None
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(config, import_custom_modules=False)
    except Exception as err:  # a config that does not load: P unknown, said so
        print(f'report.py: warning: {config}: not readable ({err}); prompt count unknown',
              file=sys.stderr)
        return None
    return _num_tokens(_backbone_and_prompt(cfg.get('model'))[1])
