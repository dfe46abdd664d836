"""The papers' result tables from the ``final/summary.json`` files of tools/protocol.py, and
optionally a figure of them.

    python tools/analysis/report.py WORK_DIR [WORK_DIR ...] [--markdown FILE] [--csv FILE]
        [--plot FILE.png]

Every ``final/summary.json`` under the given folders (searched recursively) is one
(method, task) result; the tables show its ``mean`` test accuracy over seeds.

VTAB-1k: a row per method with the 19 tasks in the canonical order, the Natural /
Specialized / Structured means, ``Group mean`` (mean of the three group means, the number
VPT / E2VPT report), ``Mean`` (plain mean over the 19 tasks, the number NOAH / CVPT report)
and the tuned-parameter percentage (mean over the tasks present). FGVC: the 5 tasks, their
mean and the tuned percentage. A mean over a set with a missing task is left out ('-')
rather than computed over fewer tasks. The Markdown goes to stdout (and ``--markdown``);
``--csv`` gets the same numbers at full precision.

Prompt count P: the ``num_tokens`` summary.json records (``model.backbone.prompt.num_tokens``
of the runs; summaries written before it was recorded: read from the config MMEngine saved
for the result's first seed run). Results of one method for one task at different P are
not merged: that method gets a row per P, labelled e.g. ``CVPT (P=10)`` (``P=?`` for an
unknown P); a method with one result per task keeps one row even where P differs from task
to task (CVPT's per-task P). Two results for the same (method, task, P) are an error, as is
any repeat when P is unknown. The CSV has the row's P in ``num_tokens`` (empty unless all
its results share one).

``--plot FILE.png`` also writes one PNG (the Markdown is printed unchanged): a row of
panels per benchmark present, with the per-task bars, the means as bars and, where a
method has rows at two or more known P, its accuracy vs P. The tables and the figure
are built by :mod:`mmvpt.analysis.report` (its docstring says what each shows); this script
parses the command line, prints and writes the files.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmvpt.analysis.report import (  # noqa: E402
    ReportError,
    build_report,
    load_results,
    write_figure,
    write_report_csv,
)
from mmvpt.utils.protocol_results import find_summaries  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='VTAB-1k / FGVC tables from the final/summary.json files that '
        'tools/protocol.py writes (it reads nothing else: runs of tools/train.py alone have no '
        'summary)')
    parser.add_argument('work_dirs', nargs='+', help='folders searched for final/summary.json')
    parser.add_argument('--markdown', help='also write the Markdown tables to this file')
    parser.add_argument('--csv', help='write the numbers at full precision to this CSV file')
    parser.add_argument(
        '--plot', metavar='FILE.png',
        help='also write a PNG figure (its folder is created): a row of panels per benchmark '
        '(VTAB-1k, FGVC) in this one file, with per-task bars per table row, the means as bars '
        'and, where a method has rows at several prompt counts P, its mean accuracy vs P')
    args = parser.parse_args(argv)
    if args.plot is not None and not args.plot.lower().endswith('.png'):
        parser.error(f'--plot {args.plot}: the figure is a PNG; name it FILE.png')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        paths = find_summaries(args.work_dirs)
    except ValueError as err:
        raise ReportError(str(err)) from None
    if not paths:
        raise ReportError(f'no final/summary.json under {", ".join(args.work_dirs)}; '
                          'tools/protocol.py writes them')
    results = load_results(paths)
    markdown, csv_rows = build_report(results)
    print(markdown, end='')
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown)
    if args.csv:
        write_report_csv(args.csv, csv_rows)
    if args.plot:
        write_figure(results, args.plot)
    return markdown, csv_rows


if __name__ == '__main__':
    try:
        main()
    except ReportError as err:
        print(f'report.py: error: {err}', file=sys.stderr)
        sys.exit(1)
