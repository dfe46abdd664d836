"""The papers' result tables from the ``final/summary.json`` files of tools/protocol.py.

    python tools/analysis/report.py WORK_DIR [WORK_DIR ...] [--markdown FILE] [--csv FILE]

Every ``final/summary.json`` under the given folders (searched recursively) is one
(method, task) result; the tables show its ``mean`` test accuracy over seeds.

VTAB-1k: a row per method with the 19 tasks in the canonical order, the Natural /
Specialized / Structured means, ``Group mean`` (mean of the three group means, the number
VPT / E2VPT report), ``Mean`` (plain mean over the 19 tasks, the number NOAH / CVPT report)
and the tuned-parameter percentage (mean over the tasks present). FGVC: the 5 tasks, their
mean and the tuned percentage. A mean over a set with a missing task is left out ('-')
rather than computed over fewer tasks. The Markdown goes to stdout (and ``--markdown``);
``--csv`` gets the same numbers at full precision.
"""
import argparse
import csv
import json
import os
import os.path as osp
import statistics
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
from mmvpt.datasets.fgvc import FGVC_TASKS  # noqa: E402
from mmvpt.datasets.vtab import VTAB_TASKS, canonical_vtab_task  # noqa: E402

VTAB_GROUPS = ('natural', 'specialized', 'structured')
VTAB_COLUMNS = (*VTAB_TASKS, *VTAB_GROUPS, 'group_mean', 'mean', 'tuned_percent')
FGVC_COLUMNS = (*FGVC_TASKS, 'mean', 'tuned_percent')

# Column headers as the papers print them.
HEADERS = dict(
    cifar='CIFAR-100', caltech101='Caltech101', dtd='DTD', oxford_flowers102='Flowers102',
    oxford_iiit_pet='Pets', svhn='SVHN', sun397='Sun397', patch_camelyon='Camelyon',
    eurosat='EuroSAT', resisc45='Resisc45', diabetic_retinopathy='Retinopathy',
    clevr_count='Clevr-Count', clevr_dist='Clevr-Dist', dmlab='DMLab', kitti='KITTI-Dist',
    dsprites_loc='dSpr-Loc', dsprites_ori='dSpr-Ori', smallnorb_azi='sNORB-Azim',
    smallnorb_ele='sNORB-Elev', natural='Natural', specialized='Specialized',
    structured='Structured', group_mean='Group mean', mean='Mean', tuned_percent='Tuned (%)',
    cub='CUB-200-2011', nabirds='NABirds', flowers='Oxford Flowers', dogs='Stanford Dogs',
    cars='Stanford Cars')

# Row order and names of the methods mmvpt ships; other methods follow by folder name.
METHOD_NAMES = dict(full='Full fine-tuning', linear='Linear probing', vpt='VPT-deep',
                    e2vpt='E2VPT', cvpt='CVPT', ivpt='iVPT')


class ReportError(ValueError):
    """Results that cannot go into one table, with the files named."""


def find_summaries(work_dirs):
    """Every ``final/summary.json`` under ``work_dirs``, each file once."""
    found = set()
    for work_dir in work_dirs:
        if not osp.isdir(work_dir):
            raise ReportError(f'{work_dir} is not a folder')
        for root, _, files in os.walk(work_dir):
            if osp.basename(root) == 'final' and 'summary.json' in files:
                found.add(osp.realpath(osp.join(root, 'summary.json')))
    return sorted(found)


def load_results(paths):
    """{benchmark: {method: {canonical task: summary}}} from summary files."""
    results, sources = {}, {}
    for path in paths:
        with open(path) as f:
            summary = json.load(f)
        benchmark, method, task = (summary.get(key) for key in ('benchmark', 'method', 'task'))
        if benchmark == 'vtab':
            try:
                task = canonical_vtab_task(task)
            except ValueError as err:
                raise ReportError(f'{path}: {err}') from None
        elif benchmark == 'fgvc':
            if task not in FGVC_TASKS:
                raise ReportError(f'{path}: unknown FGVC task {task!r}')
        else:
            raise ReportError(f'{path}: benchmark {benchmark!r} is neither vtab nor fgvc')
        if not isinstance(summary.get('mean'), (int, float)):
            raise ReportError(f'{path}: no numeric "mean"')
        key = (benchmark, method, task)
        if key in sources:
            raise ReportError(f'two results for {method} on {benchmark} {task}: {sources[key]} '
                              f'and {path}; pass the work dirs of one of them only')
        sources[key] = path
        results.setdefault(benchmark, {}).setdefault(method, {})[task] = summary
    return results


def mean_of_all(values):
    """Mean of ``values``, or None if one of them is missing (None)."""
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def tuned_percent_mean(results):
    """Mean tuned-parameter percentage over the tasks that report one."""
    values = [r['tuned_percent'] for r in results.values() if r.get('tuned_percent') is not None]
    return statistics.fmean(values) if values else None


def vtab_row(results):
    """{column: value or None} of one method from {task: summary} (summary needs ``mean``,
    optionally ``tuned_percent``); columns as in VTAB_COLUMNS."""
    row = {task: results[task]['mean'] if task in results else None for task in VTAB_TASKS}
    for group in VTAB_GROUPS:
        row[group] = mean_of_all(row[task] for task, (task_group, _, _) in VTAB_TASKS.items()
                                 if task_group == group)
    row['group_mean'] = mean_of_all(row[group] for group in VTAB_GROUPS)
    row['mean'] = mean_of_all(row[task] for task in VTAB_TASKS)
    row['tuned_percent'] = tuned_percent_mean(results)
    return row


def fgvc_row(results):
    """{column: value or None} of one method from {task: summary}; columns as in FGVC_COLUMNS."""
    row = {task: results[task]['mean'] if task in results else None for task in FGVC_TASKS}
    row['mean'] = mean_of_all(row[task] for task in FGVC_TASKS)
    row['tuned_percent'] = tuned_percent_mean(results)
    return row


def ordered_methods(methods):
    known = [m for m in METHOD_NAMES if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_NAMES)


def format_cell(column, value):
    if value is None:
        return '-'
    return f'{value:.2f}' if column == 'tuned_percent' else f'{value:.1f}'


def markdown_table(title, columns, rows, notes):
    """``rows``: [(method, {column: value})]."""
    lines = [f'## {title}', '',
             '| Method | ' + ' | '.join(HEADERS[c] for c in columns) + ' |',
             '|:--|' + '--:|' * len(columns)]
    for method, row in rows:
        cells = [format_cell(c, row[c]) for c in columns]
        lines.append(f'| {METHOD_NAMES.get(method, method)} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines += notes
    if any(value is None for _, row in rows for value in row.values()):
        lines.append("'-': no result for that task, or a mean over tasks of which one or more "
                     "have no result (means are never taken over fewer tasks).")
    return '\n'.join(lines) + '\n'


def build_report(results):
    """(markdown, csv rows) for {benchmark: {method: {task: summary}}}."""
    sections, csv_rows = [], []
    tables = (
        ('vtab', 'VTAB-1k', VTAB_COLUMNS, vtab_row,
         ['Top-1 test accuracy (%), mean over seeds. Natural / Specialized / Structured: mean '
          'over the group\'s tasks; Group mean: mean of the three groups; Mean: mean over the '
          '19 tasks; Tuned: tuned / total parameters, mean over the tasks present.']),
        ('fgvc', 'FGVC', FGVC_COLUMNS, fgvc_row,
         ['Top-1 test accuracy (%), mean over seeds. Mean: mean over the 5 tasks; Tuned: '
          'tuned / total parameters, mean over the tasks present.']),
    )
    for benchmark, title, columns, make_row, notes in tables:
        by_method = results.get(benchmark)
        if not by_method:
            continue
        rows = [(method, make_row(by_method[method])) for method in ordered_methods(by_method)]
        sections.append(markdown_table(title, columns, rows, notes))
        csv_rows += [dict(benchmark=benchmark, method=method, **row) for method, row in rows]
    return '\n'.join(sections), csv_rows


def write_csv(path, rows):
    """One row per (benchmark, method); a column that does not apply to a benchmark, or has
    no value, is empty."""
    columns = ['benchmark', 'method', *VTAB_TASKS, *VTAB_GROUPS, 'group_mean', *FGVC_TASKS,
               'mean', 'tuned_percent']
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval='')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if v is None else repr(v) if isinstance(v, float) else v
                             for k, v in row.items()})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='VTAB-1k / FGVC tables from protocol results')
    parser.add_argument('work_dirs', nargs='+', help='folders searched for final/summary.json')
    parser.add_argument('--markdown', help='also write the Markdown tables to this file')
    parser.add_argument('--csv', help='write the numbers at full precision to this CSV file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    paths = find_summaries(args.work_dirs)
    if not paths:
        raise ReportError(f'no final/summary.json under {", ".join(args.work_dirs)}; '
                          'tools/protocol.py writes them')
    markdown, csv_rows = build_report(load_results(paths))
    print(markdown, end='')
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown)
    if args.csv:
        write_csv(args.csv, csv_rows)
    return markdown, csv_rows


if __name__ == '__main__':
    try:
        main()
    except ReportError as err:
        print(f'report.py: error: {err}', file=sys.stderr)
        sys.exit(1)
