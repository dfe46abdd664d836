"""The papers' result tables from the protocol's ``final/summary.json`` files, as data,
Markdown, CSV and a figure: what ``tools/analysis/report.py`` prints and writes.

Every summary is one (method, task) result (read by
:func:`mmvpt.utils.protocol_results.read_summary`); the tables show its ``mean`` test
accuracy over seeds.

VTAB-1k: a row per method with the 19 tasks in the canonical order, the Natural /
Specialized / Structured means, ``Group mean`` (mean of the three group means, the number
VPT / E2VPT report), ``Mean`` (plain mean over the 19 tasks, the number NOAH / CVPT report)
and the tuned-parameter percentage (mean over the tasks present). FGVC: the 5 tasks, their
mean and the tuned percentage. A mean over a set with a missing task is left out (None,
'-' in the tables) rather than computed over fewer tasks.

Prompt count P: the summary's ``num_tokens``. Results of one method for one task at
different P are not merged: that method gets a row per P, labelled e.g. ``CVPT (P=10)``
(``P=?`` for an unknown P); a method with one result per task keeps one row even where P
differs from task to task (CVPT's per-task P). Two results for the same (method, task, P)
are an error, as is any repeat when P is unknown. Rows are labelled with the method's
display name, in the order of :func:`~mmvpt.utils.protocol_results.method_folders` (other
methods follow by folder name).

The figure (:func:`build_figure`): a row of panels per benchmark present (VTAB-1k above
FGVC), each with the per-task bars (a group per task, in table order, a bar per table row),
the means as bars (VTAB-1k: Natural, Specialized, Structured, Group mean, Mean; FGVC: Mean)
and, where some method has rows at two or more known P, accuracy vs P: a line per such
method through the plain mean of its accuracies over the tasks that all of its P rows have
(the legend gives their number), x on a log scale when the largest P is 10 or more times
the smallest. A missing result or a mean the table leaves out has no bar, only a '-' at the
foot of its place. The size is fixed by the content (see :func:`figure_size`) at ``DPI``
dots per inch.
"""
import collections
import csv
import math
import os
import os.path as osp
import statistics
import sys

from mmvpt.datasets.fgvc import FGVC_TASKS
from mmvpt.datasets.vtab import VTAB_TASKS, canonical_vtab_task
from mmvpt.utils.protocol_results import method_folders, read_summary

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

# The --plot figure: inches, DPI dots each (see figure_size).
DPI = 100
ROW_HEIGHT = 4.5  # a benchmark's row of panels
SLOT_MIN, SLOT_PER_BAR = 0.5, 0.15  # a column's bars: max(SLOT_MIN, SLOT_PER_BAR x (bars + 1))
MARGIN = 1.0  # per bar panel, for its axis labels
LEGEND_WIDTH = 2.0  # the legend right of the means panel
CURVE_WIDTH = 4.5  # the accuracy-vs-P panel


class ReportError(ValueError):
    """Results that cannot go into one table, with the files named."""


class RowKey(collections.namedtuple('RowKey', 'method num_tokens split name', defaults=(None, ))):
    """A table row: ``method``'s results (``name``: its display name, the method folder's
    if None); ``split``: only those at prompt count ``num_tokens`` (the method has a task at
    several P), else all of them, ``num_tokens`` then being their common P or None."""

    @property
    def label(self):
        name = self.name or method_label(self.method)
        if not self.split:
            return name
        return f'{name} (P={"?" if self.num_tokens is None else self.num_tokens})'


def method_label(method):
    """The name of a method folder's rows where no summary gives one."""
    folders = method_folders()
    if method in folders:
        from mmvpt.models.prompts import display_name
        prompt_type, frozen = folders[method]
        return display_name(prompt_type, frozen=frozen)
    return method


def row_label(key):
    """The Method cell of a row: a RowKey's label, or a method folder's name."""
    return key.label if isinstance(key, RowKey) else method_label(key)


def load_results(paths):
    """{benchmark: {RowKey: {canonical task: summary}}} from summary files."""
    entries, sources, names = [], {}, {}
    for path in paths:
        summary = read_summary(path)
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
        tokens = summary['num_tokens']
        key = (benchmark, method, task, tokens)
        if key in sources:
            at = '' if tokens is None else f' with P={tokens}'
            raise ReportError(f'two results for {method} on {benchmark} {task}{at}: '
                              f'{sources[key]} and {path}; pass the work dirs of one of them '
                              'only')
        sources[key] = path
        names.setdefault((benchmark, method), summary['method_name'])
        entries.append((benchmark, method, task, tokens, summary))
    # A method with a task at more than one P gets a row per P.
    per_task = collections.Counter((b, m, t) for b, m, t, _, _ in entries)
    split = {(b, m) for (b, m, _), n in per_task.items() if n > 1}
    common = collections.defaultdict(set)
    for b, m, _, tokens, _ in entries:
        common[b, m].add(tokens)
    results = {}
    for b, m, task, tokens, summary in entries:
        if (b, m) in split:
            row = RowKey(m, tokens, True, names[b, m])
        else:
            row = RowKey(m, next(iter(common[b, m])) if len(common[b, m]) == 1 else None, False,
                         names[b, m])
        results.setdefault(b, {}).setdefault(row, {})[task] = summary
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
    """Method folders in the report's row order: method_folders()', then the others by name."""
    folders = method_folders()
    known = [m for m in folders if m in methods]
    return known + sorted(m for m in methods if m not in folders)


def ordered_rows(keys):
    """Row keys by method (ordered_methods), then by P, an unknown P last."""
    by_method = collections.defaultdict(list)
    for key in keys:
        by_method[key.method].append(key)
    return [key for method in ordered_methods(by_method)
            for key in sorted(by_method[method],
                              key=lambda k: (k.num_tokens is None, k.num_tokens or 0))]


def format_cell(column, value):
    if value is None:
        return '-'
    return f'{value:.2f}' if column == 'tuned_percent' else f'{value:.1f}'


def markdown_table(title, columns, rows, notes):
    """``rows``: [(RowKey or method, {column: value})]."""
    lines = [f'## {title}', '',
             '| Method | ' + ' | '.join(HEADERS[c] for c in columns) + ' |',
             '|:--|' + '--:|' * len(columns)]
    for key, row in rows:
        cells = [format_cell(c, row[c]) for c in columns]
        lines.append(f'| {row_label(key)} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines += notes
    if any(value is None for _, row in rows for value in row.values()):
        lines.append("'-': no result for that task, or a mean over tasks of which one or more "
                     "have no result (means are never taken over fewer tasks).")
    return '\n'.join(lines) + '\n'


TABLES = (
    dict(benchmark='vtab', title='VTAB-1k', columns=VTAB_COLUMNS, make_row=vtab_row,
         tasks=tuple(VTAB_TASKS), means=(*VTAB_GROUPS, 'group_mean', 'mean'),
         notes=['Top-1 test accuracy (%), mean over seeds. Natural / Specialized / Structured: '
                'mean over the group\'s tasks; Group mean: mean of the three groups; Mean: '
                'mean over the 19 tasks; Tuned: tuned / total parameters, mean over the tasks '
                'present.']),
    dict(benchmark='fgvc', title='FGVC', columns=FGVC_COLUMNS, make_row=fgvc_row,
         tasks=tuple(FGVC_TASKS), means=('mean',),
         notes=['Top-1 test accuracy (%), mean over seeds. Mean: mean over the 5 tasks; Tuned: '
                'tuned / total parameters, mean over the tasks present.']),
)
SPLIT_NOTE = ('P: prompt tokens, model.backbone.prompt.num_tokens of the runs; a method with '
              'results at several P for a task has a row per P.')


def report_tables(results):
    """[(table spec from TABLES, [(RowKey, {column: value})])] of the benchmarks present."""
    tables = []
    for spec in TABLES:
        by_row = results.get(spec['benchmark'])
        if by_row:
            tables.append((spec, [(key, spec['make_row'](by_row[key]))
                                  for key in ordered_rows(by_row)]))
    return tables


# The values a protocol chooses, as the chosen-values table prints them (summary key: label).
CHOSEN_LABELS = dict(lr='lr', wd='wd', num_tokens='P', masked_tokens='masked tokens',
                     masked_pieces='masked pieces')


def format_chosen(chosen):
    """'lr 0.625, wd 0.0001, P 50' of a summary's ``chosen`` values."""
    return ', '.join(f'{CHOSEN_LABELS.get(name, name)} {value:g}' if isinstance(value, float)
                     else f'{CHOSEN_LABELS.get(name, name)} {value}'
                     for name, value in chosen.items())


def chosen_table(spec, by_row):
    """The values each result was trained with, per row and task (what tools/protocol.py
    chose: the search's lr, wd and P, E²VPT's mask; a fixed recipe's lr and wd), or None
    where no summary records them."""
    cells = {key: [format_chosen(by_row[key][task]['chosen'])
                   if 'chosen' in by_row[key].get(task, {}) else '-' for task in spec['tasks']]
             for key in ordered_rows(by_row)}
    if all(cell == '-' for row in cells.values() for cell in row):
        return None
    rows = [f'| {row_label(key)} | ' + ' | '.join(row) + ' |' for key, row in cells.items()]
    lines = [f'### {spec["title"]}: the values chosen', '',
             '| Method | ' + ' | '.join(HEADERS[t] for t in spec['tasks']) + ' |',
             '|:--|' + ':--|' * len(spec['tasks']), *rows, '',
             'What each result trained with: the protocol\'s choice on the val split (lr, wd, '
             "P; E2VPT's masked tokens and pieces per token) or its fixed recipe's values; the "
             "candidates' val scores are in each final/summary.json."]
    return '\n'.join(lines) + '\n'


def build_report(results):
    """(markdown, csv rows) for {benchmark: {RowKey: {task: summary}}}."""
    sections, csv_rows = [], []
    for spec, rows in report_tables(results):
        notes = spec['notes'] + ([SPLIT_NOTE] if any(key.split for key, _ in rows) else [])
        sections.append(markdown_table(spec['title'], spec['columns'], rows, notes))
        chosen = chosen_table(spec, results[spec['benchmark']])
        if chosen:
            sections.append(chosen)
        csv_rows += [dict(benchmark=spec['benchmark'], method=key.method,
                          num_tokens=key.num_tokens, **row) for key, row in rows]
    return '\n'.join(sections), csv_rows


def write_report_csv(path, rows):
    """One row per (benchmark, table row); a column that does not apply to a benchmark, or
    has no value, is empty. ``num_tokens``: the P of the row's results where they all have
    the same known one."""
    columns = ['benchmark', 'method', 'num_tokens', *VTAB_TASKS, *VTAB_GROUPS, 'group_mean',
               *FGVC_TASKS, 'mean', 'tuned_percent']
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval='')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if v is None else repr(v) if isinstance(v, float) else v
                             for k, v in row.items()})


# ------------------------------------------------------------------------------ the figure

def prompt_curves(by_row, tasks):
    """Accuracy vs P of one benchmark's {RowKey: {task: summary}}: {method: (common tasks,
    [(P, mean)])} for each method with rows at two or more known P, the mean being the
    plain mean of its accuracies over the tasks (of ``tasks``, in that order) that every
    one of those rows has. A method whose P rows share no task has no curve."""
    per_method = collections.defaultdict(dict)
    for key, results in by_row.items():
        if key.split and key.num_tokens is not None:
            per_method[key.method][key.num_tokens] = results
    curves = {}
    for method in ordered_methods(per_method):
        by_tokens = per_method[method]
        if len(by_tokens) < 2:
            continue
        common = [task for task in tasks if all(task in r for r in by_tokens.values())]
        if not common:
            print(f'report.py: warning: no accuracy-vs-P curve for {method}: none of its tasks '
                  f'has a result at every P ({", ".join(map(str, sorted(by_tokens)))})',
                  file=sys.stderr)
            continue
        curves[method] = (common, [
            (tokens, statistics.fmean(by_tokens[tokens][task]['mean'] for task in common))
            for tokens in sorted(by_tokens)])
    return curves


def panel_widths(num_bars, num_tasks, num_means, curve):
    """Inches of the panels of one benchmark's row: (per-task bars, means and legend,
    accuracy vs P or 0)."""
    slot = max(SLOT_MIN, SLOT_PER_BAR * (num_bars + 1))
    return (num_tasks * slot + MARGIN, num_means * slot + MARGIN + LEGEND_WIDTH,
            CURVE_WIDTH if curve else 0.)


def figure_size(rows):
    """(width, height) in inches of the --plot figure; ``rows``: per benchmark, (bars per
    group = table rows, task columns, mean columns, has an accuracy-vs-P panel). Width: the
    widest row, (tasks + means) x slot + 2 MARGIN + LEGEND_WIDTH (+ CURVE_WIDTH), slot =
    max(SLOT_MIN, SLOT_PER_BAR x (bars + 1)), rounded up to a quarter inch so that x DPI it
    is a whole number of pixels; height: ROW_HEIGHT per row."""
    width = max(sum(panel_widths(*row)) for row in rows)
    return math.ceil(width * 4 - 1e-9) / 4, ROW_HEIGHT * len(rows)


def series_colors(count):
    import matplotlib
    if count <= 10:
        return [f'C{i}' for i in range(count)]
    cmap = matplotlib.colormaps['tab20']
    return [cmap(i % 20) for i in range(count)]


def draw_bars(ax, columns, rows, colors):
    """A group of bars per column (x = its index), a bar per row; a missing value gets no
    bar but a '-' at the foot. Each bar's gid is '<row label>|<column>'."""
    width = 0.8 / len(rows)
    for k, ((key, row), color) in enumerate(zip(rows, colors)):
        label = row_label(key)
        xs = [i - 0.4 + (k + 0.5) * width for i in range(len(columns))]
        present = [i for i, column in enumerate(columns) if row[column] is not None]
        bars = ax.bar([xs[i] for i in present], [row[columns[i]] for i in present], width,
                      color=color, label=label)
        for bar, i in zip(bars, present):
            bar.set_gid(f'{label}|{columns[i]}')
        for i, column in enumerate(columns):
            if row[column] is None:
                ax.text(xs[i], 0.5, '-', ha='center', va='bottom', fontsize=9, color=color)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([HEADERS[c] for c in columns], rotation=60, ha='right',
                       rotation_mode='anchor')
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel('top-1 test accuracy (%)')
    ax.grid(axis='y', alpha=0.3)
    ax.set_axisbelow(True)


def draw_curves(ax, curves, names, title):
    """A line per method: x = P, y = its mean over its common tasks; ``names``: {method:
    display name}."""
    all_tokens = sorted({tokens for _, points in curves.values() for tokens, _ in points})
    for j, (method, (common, points)) in enumerate(curves.items()):
        ax.plot([p for p, _ in points], [m for _, m in points], marker='o', color=f'C{j}',
                label=f'{names[method]} ({len(common)} tasks)')
    if all_tokens[0] > 0 and all_tokens[-1] >= 10 * all_tokens[0]:
        from matplotlib.ticker import NullLocator
        ax.set_xscale('log')
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(all_tokens)
    ax.set_xticklabels([str(p) for p in all_tokens])
    ax.set_xlabel('P (model.backbone.prompt.num_tokens)')
    ax.set_ylabel('mean top-1 over the tasks all P have (%)')
    ax.set_title(f'{title}: accuracy vs P')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def build_figure(results):
    """The report's figure of {benchmark: {RowKey: {task: summary}}}, a matplotlib Figure (no
    pyplot: nothing opens a window or needs a display). A row of panels per benchmark:
    axes labelled '<benchmark>-tasks', '<benchmark>-means' and, where there are curves,
    '<benchmark>-prompts'."""
    from matplotlib.figure import Figure
    rows = []
    for spec, table in report_tables(results):
        curves = prompt_curves(results[spec['benchmark']], spec['tasks'])
        rows.append((spec, table, curves))
    sizes = [(len(table), len(spec['tasks']), len(spec['means']), bool(curves))
             for spec, table, curves in rows]
    width, height = figure_size(sizes)
    fig = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
    grid = fig.add_gridspec(len(rows), 1)
    for i, ((spec, table, curves), size) in enumerate(zip(rows, sizes)):
        ratios = [w for w in panel_widths(*size) if w]
        if width - sum(ratios) > 0.25:  # a narrower row keeps the scale of its bars
            ratios.append(width - sum(ratios))
        cells = grid[i].subgridspec(1, len(ratios), width_ratios=ratios)
        benchmark, title = spec['benchmark'], spec['title']
        colors = series_colors(len(table))
        ax = fig.add_subplot(cells[0], label=f'{benchmark}-tasks')
        draw_bars(ax, spec['tasks'], table, colors)
        ax.set_title(f'{title}: per task (mean over seeds)')
        handles, labels = ax.get_legend_handles_labels()
        ax = fig.add_subplot(cells[1], label=f'{benchmark}-means')
        draw_bars(ax, spec['means'], table, colors)
        ax.set_title(f'{title}: means')
        ax.legend(handles, labels, loc='upper left', bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0., fontsize=8)
        if curves:
            names = {key.method: key.name or method_label(key.method) for key, _ in table}
            draw_curves(fig.add_subplot(cells[2], label=f'{benchmark}-prompts'), curves, names,
                        title)
    return fig


def write_figure(results, path):
    """:func:`build_figure` as a PNG file."""
    try:
        fig = build_figure(results)
    except ImportError as err:
        raise ReportError(f'--plot needs matplotlib: {err}') from None
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI, format='png')
    return fig
