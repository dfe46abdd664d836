"""mmvpt.analysis.report and tools/analysis/report.py on hand-written final/summary.json
files: group means, group mean, plain mean, tuned %, '-' for missing tasks, the CSV at full
precision, a row per prompt count P (recorded in the summaries, or read from the saved
configs of summaries that do not record it) and the --plot figure."""
import csv
import functools
import glob
import json
import os
import os.path as osp
import struct
import subprocess
import sys

import pytest

from mmvpt.analysis import report
from mmvpt.utils.protocol_results import (
    final_summary,
    find_summaries,
    method_record,
    prompt_count,
    read_summary,
)

from tests.conftest import ROOT, run_tool

VTAB_NATURAL = ('cifar', 'caltech101', 'dtd', 'oxford_flowers102', 'oxford_iiit_pet', 'svhn',
                'sun397')
VTAB_SPECIALIZED = ('patch_camelyon', 'eurosat', 'resisc45', 'diabetic_retinopathy')
VTAB_STRUCTURED = ('clevr_count', 'clevr_dist', 'dmlab', 'kitti', 'dsprites_loc', 'dsprites_ori',
                   'smallnorb_azi', 'smallnorb_ele')
VTAB_ORDER = VTAB_NATURAL + VTAB_SPECIALIZED + VTAB_STRUCTURED

# vpt: all 19 tasks. Natural 70..76 (mean 73), specialized 80, 82, 84, 86 (mean 83),
# structured 50..57 (mean 53.5); group mean (73 + 83 + 53.5) / 3 = 69.833..., plain mean
# (7 * 73 + 4 * 83 + 8 * 53.5) / 19 = 1271 / 19 = 66.894...; tuned 0.1, 0.2, ..., 1.9 -> 1.0.
VPT_VTAB = dict(zip(VTAB_ORDER, [70, 71, 72, 73, 74, 75, 76, 80, 82, 84, 86,
                                 50, 51, 52, 53, 54, 55, 56, 57]))
VPT_VTAB_TUNED = {task: 0.1 * (i + 1) for i, task in enumerate(VTAB_ORDER)}
# cvpt: no diabetic_retinopathy. Natural 60..66 (mean 63), structured 40, 42, ..., 54
# (mean 47); specialized, group mean and mean cannot be taken. Tuned 0.2 on 17 tasks and
# 2.0 on cifar -> (17 * 0.2 + 2.0) / 18 = 0.3.
CVPT_VTAB = dict(zip(VTAB_NATURAL, [60, 61, 62, 63, 64, 65, 66]))
CVPT_VTAB.update(patch_camelyon=81, eurosat=95, resisc45=85)
CVPT_VTAB.update(zip(VTAB_STRUCTURED, [40, 42, 44, 46, 48, 50, 52, 54]))
CVPT_VTAB_TUNED = {task: 2.0 if task == 'cifar' else 0.2 for task in CVPT_VTAB}
# FGVC: vpt has all five (mean 435 / 5 = 87, tuned 0.7); cvpt has no cars (tuned 0.3).
VPT_FGVC = dict(cub=88, nabirds=84, flowers=99, dogs=80, cars=84)
VPT_FGVC_TUNED = dict(cub=0.5, nabirds=0.6, flowers=0.7, dogs=0.8, cars=0.9)
CVPT_FGVC = dict(cub=90, nabirds=85, flowers=99.5, dogs=81)
CVPT_FGVC_TUNED = dict(cub=0.1, nabirds=0.2, flowers=0.3, dogs=0.6)


def write_summary(root, method, benchmark, task, mean, tuned_percent, folder_task=None,
                  saved=None, record=None):
    """A final/summary.json as tools/protocol.py wrote it before it recorded the method and
    P, in its default layout; ``record``: what it records now (method_name, prompt_type,
    num_tokens), added. ``saved``: the text of a config to leave in each final seed run, as
    MMEngine's runner does (Runner.dump_config: ``<run dir>/<config file name>``, the
    --cfg-options merged in); none if None."""
    folder = osp.join(root, method, f'vit-b16_{benchmark}-{folder_task or task}', 'final')
    os.makedirs(folder, exist_ok=True)
    accuracies = {'42': mean - 1, '44': mean + 1}  # their mean is ``mean``
    config = f'configs/{method}/vit-b16_{benchmark}-{task}.py'
    summary = dict(config=config, method=method,
                   benchmark=benchmark, task=task, lr=0.1, wd=0.0, seeds=[42, 44],
                   test_accuracy=accuracies, mean=float(mean), std=1.4142135623730951,
                   tuned_params=100, total_params=10000, tuned_percent=tuned_percent,
                   **(record or {}))
    with open(osp.join(folder, 'summary.json'), 'w') as f:
        json.dump(summary, f)
    if saved is not None:
        for seed in summary['seeds']:
            os.makedirs(osp.join(folder, f'seed{seed}'), exist_ok=True)
            with open(osp.join(folder, f'seed{seed}', osp.basename(config)), 'w') as f:
                f.write(saved)


@pytest.fixture(scope='module')
def results_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('protocol'))
    for task, mean in VPT_VTAB.items():
        write_summary(root, 'vpt', 'vtab', task, mean, VPT_VTAB_TUNED[task])
    for task, mean in CVPT_VTAB.items():
        # an alias task name, as an older config might have: the report files it as cifar
        name = 'cifar100' if task == 'cifar' else task
        write_summary(root, 'cvpt', 'vtab', name, mean, CVPT_VTAB_TUNED[task])
    for task, mean in VPT_FGVC.items():
        write_summary(root, 'vpt', 'fgvc', task, mean, VPT_FGVC_TUNED[task])
    for task, mean in CVPT_FGVC.items():
        write_summary(root, 'cvpt', 'fgvc', task, mean, CVPT_FGVC_TUNED[task])
    # Not a final result: the search must not pick it up.
    os.makedirs(osp.join(root, 'vpt', 'vit-b16_vtab-cifar', 'grid'))
    with open(osp.join(root, 'vpt', 'vit-b16_vtab-cifar', 'grid', 'summary.json'), 'w') as f:
        json.dump(dict(benchmark='vtab', method='vpt', task='cifar', mean=0.), f)
    return root


def report_of(*work_dirs, csv_path=None):
    """(markdown, csv rows) of the summaries under ``work_dirs``; the CSV written to
    ``csv_path`` if given."""
    markdown, csv_rows = report.build_report(report.load_results(find_summaries(work_dirs)))
    if csv_path is not None:
        report.write_report_csv(csv_path, csv_rows)
    return markdown, csv_rows


def table_data(*work_dirs):
    """{benchmark: {row label: {column: value}}} of the report's tables."""
    results = report.load_results(find_summaries(work_dirs))
    return {spec['benchmark']: {report.row_label(key): row for key, row in rows}
            for spec, rows in report.report_tables(results)}


def table_rows(markdown, title):
    """{method label: {header: cell}} of the Markdown table under ``## title``."""
    lines = markdown.split(f'## {title}\n', 1)[1].split('\n')
    table = [line for line in lines[:lines.index('', 2)] if line.startswith('|')]
    headers = [cell.strip() for cell in table[0].strip('|').split('|')]
    rows = {}
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        rows[cells[0]] = dict(zip(headers[1:], cells[1:]))
    return headers, rows


def test_vtab_row_means():
    row = report.vtab_row({task: dict(mean=mean, tuned_percent=VPT_VTAB_TUNED[task])
                           for task, mean in VPT_VTAB.items()})
    assert row['natural'] == pytest.approx(73.0)
    assert row['specialized'] == pytest.approx(83.0)
    assert row['structured'] == pytest.approx(53.5)
    assert row['group_mean'] == pytest.approx(209.5 / 3)
    assert row['mean'] == pytest.approx(1271 / 19)
    assert row['tuned_percent'] == pytest.approx(1.0)
    assert [row[task] for task in VTAB_ORDER] == [VPT_VTAB[task] for task in VTAB_ORDER]


def test_vtab_row_leaves_out_means_over_missing_tasks():
    row = report.vtab_row({task: dict(mean=mean, tuned_percent=CVPT_VTAB_TUNED[task])
                           for task, mean in CVPT_VTAB.items()})
    assert row['diabetic_retinopathy'] is None
    assert row['natural'] == pytest.approx(63.0)
    assert row['structured'] == pytest.approx(47.0)
    assert row['specialized'] is None
    assert row['group_mean'] is None
    assert row['mean'] is None
    # over the 18 tasks present
    assert row['tuned_percent'] == pytest.approx(0.3)


def test_fgvc_row():
    row = report.fgvc_row({task: dict(mean=mean, tuned_percent=VPT_FGVC_TUNED[task])
                           for task, mean in VPT_FGVC.items()})
    assert row['mean'] == pytest.approx(87.0)
    assert row['tuned_percent'] == pytest.approx(0.7)
    row = report.fgvc_row({task: dict(mean=mean, tuned_percent=CVPT_FGVC_TUNED[task])
                           for task, mean in CVPT_FGVC.items()})
    assert row['cars'] is None and row['mean'] is None
    assert row['tuned_percent'] == pytest.approx(0.3)


def check_tables(markdown):
    headers, vtab = table_rows(markdown, 'VTAB-1k')
    # 19 tasks in the canonical order, then the means and the tuned percentage
    assert headers == ['Method', 'CIFAR-100', 'Caltech101', 'DTD', 'Flowers102', 'Pets', 'SVHN',
                       'Sun397', 'Camelyon', 'EuroSAT', 'Resisc45', 'Retinopathy', 'Clevr-Count',
                       'Clevr-Dist', 'DMLab', 'KITTI-Dist', 'dSpr-Loc', 'dSpr-Ori', 'sNORB-Azim',
                       'sNORB-Elev', 'Natural', 'Specialized', 'Structured', 'Group mean', 'Mean',
                       'Tuned (%)']
    assert list(vtab) == ['VPT-deep', 'CVPT']
    vpt, cvpt = vtab['VPT-deep'], vtab['CVPT']
    assert [vpt[h] for h in headers[1:20]] == [f'{VPT_VTAB[t]:.1f}' for t in VTAB_ORDER]
    assert (vpt['Natural'], vpt['Specialized'], vpt['Structured']) == ('73.0', '83.0', '53.5')
    assert vpt['Group mean'] == '69.8'  # 69.833...
    assert vpt['Mean'] == '66.9'  # 66.894...
    assert vpt['Tuned (%)'] == '1.00'
    assert cvpt['CIFAR-100'] == '60.0'  # written as task 'cifar100'
    assert cvpt['Retinopathy'] == '-'
    assert (cvpt['Natural'], cvpt['Specialized'], cvpt['Structured']) == ('63.0', '-', '47.0')
    assert (cvpt['Group mean'], cvpt['Mean'], cvpt['Tuned (%)']) == ('-', '-', '0.30')
    vtab_section = markdown.split('## FGVC')[0]
    assert "'-': no result for that task, or a mean over tasks" in vtab_section

    headers, fgvc = table_rows(markdown, 'FGVC')
    assert headers == ['Method', 'CUB-200-2011', 'NABirds', 'Oxford Flowers', 'Stanford Dogs',
                       'Stanford Cars', 'Mean', 'Tuned (%)']
    assert fgvc['VPT-deep'] == {'CUB-200-2011': '88.0', 'NABirds': '84.0',
                                'Oxford Flowers': '99.0', 'Stanford Dogs': '80.0',
                                'Stanford Cars': '84.0', 'Mean': '87.0', 'Tuned (%)': '0.70'}
    assert fgvc['CVPT']['Oxford Flowers'] == '99.5'
    assert (fgvc['CVPT']['Stanford Cars'], fgvc['CVPT']['Mean']) == ('-', '-')
    assert fgvc['CVPT']['Tuned (%)'] == '0.30'


def check_csv(path):
    with open(path, newline='') as f:
        rows = {(r['benchmark'], r['method']): r for r in csv.DictReader(f)}
    assert set(rows) == {('vtab', 'vpt'), ('vtab', 'cvpt'), ('fgvc', 'vpt'), ('fgvc', 'cvpt')}
    vpt = rows['vtab', 'vpt']
    # full precision: the exact float of the hand-computed value, not the 1-decimal one
    assert float(vpt['group_mean']) == 209.5 / 3
    assert float(vpt['mean']) == 1271 / 19
    assert float(vpt['natural']) == 73.0 and float(vpt['structured']) == 53.5
    assert float(vpt['tuned_percent']) == pytest.approx(1.0, rel=1e-12)
    assert float(vpt['dmlab']) == 52.0
    assert vpt['cub'] == ''  # an FGVC column in a VTAB row
    cvpt = rows['vtab', 'cvpt']
    assert float(cvpt['cifar']) == 60.0
    assert cvpt['diabetic_retinopathy'] == cvpt['specialized'] == ''
    assert cvpt['group_mean'] == cvpt['mean'] == ''
    assert float(cvpt['tuned_percent']) == pytest.approx(0.3, rel=1e-12)
    assert float(rows['fgvc', 'vpt']['mean']) == 87.0
    assert rows['fgvc', 'cvpt']['cars'] == rows['fgvc', 'cvpt']['mean'] == ''
    assert rows['fgvc', 'vpt']['cifar'] == ''


def test_report_as_a_function(results_dir, tmp_path):
    csv_path = str(tmp_path / 'results.csv')
    markdown, _ = report_of(results_dir, csv_path=csv_path)
    check_tables(markdown)
    check_csv(csv_path)
    # the numbers behind the tables
    data = table_data(results_dir)
    assert list(data) == ['vtab', 'fgvc']
    assert list(data['vtab']) == ['VPT-deep', 'CVPT'] and list(data['fgvc']) == ['VPT-deep', 'CVPT']
    vpt, cvpt = data['vtab']['VPT-deep'], data['vtab']['CVPT']
    assert [vpt[t] for t in VTAB_ORDER] == [VPT_VTAB[t] for t in VTAB_ORDER]
    assert vpt['group_mean'] == 209.5 / 3 and vpt['mean'] == 1271 / 19
    assert cvpt['cifar'] == 60 and cvpt['diabetic_retinopathy'] is None
    assert cvpt['specialized'] is cvpt['group_mean'] is cvpt['mean'] is None
    assert data['fgvc']['VPT-deep']['mean'] == 87.0 and data['fgvc']['CVPT']['cars'] is None


@pytest.mark.tools
def test_report_as_a_script(results_dir, tmp_path):
    csv_path, md_path = str(tmp_path / 'results.csv'), str(tmp_path / 'results.md')
    png_path = str(tmp_path / 'results.png')
    proc = run_tool('analysis/report.py', results_dir, '--markdown', md_path, '--csv', csv_path,
                    '--plot', png_path)
    with open(md_path) as f:
        assert f.read() == proc.stdout
    check_tables(proc.stdout)
    check_csv(csv_path)
    assert png_size(png_path) == FIXTURE_PNG_SIZE
    # --plot leaves the Markdown and the CSV as they are without it
    markdown, csv_rows = report_of(results_dir, csv_path=str(tmp_path / 'plain.csv'))
    assert proc.stdout == markdown
    with open(csv_path) as f, open(tmp_path / 'plain.csv') as g:
        assert f.read() == g.read()


def test_complete_table_has_no_missing_note():
    rows = [('vpt', report.fgvc_row({task: dict(mean=mean, tuned_percent=VPT_FGVC_TUNED[task])
                                     for task, mean in VPT_FGVC.items()}))]
    markdown = report.markdown_table('FGVC', report.FGVC_COLUMNS, rows, [])
    _, table = table_rows(markdown, 'FGVC')
    assert '-' not in table['VPT-deep'].values()
    assert "'-'" not in markdown


def test_same_result_twice_is_an_error(results_dir, tmp_path):
    write_summary(str(tmp_path), 'vpt', 'vtab', 'dtd', 50., 0.1)
    with pytest.raises(report.ReportError, match='two results for vpt on vtab dtd'):
        report_of(results_dir, str(tmp_path))


@pytest.mark.tools
def test_command_line_errors_are_one_line(results_dir, tmp_path):
    for args, message in (([str(tmp_path)], 'no final/summary.json'),
                          ([str(tmp_path / 'absent')], 'absent is not a folder')):
        proc = run_tool('analysis/report.py', *args, check=False)
        assert proc.returncode == 1 and 'Traceback' not in proc.stderr
        assert proc.stderr.startswith('report.py: error: ') and message in proc.stderr
    # --plot creates its folder
    figure = tmp_path / 'new' / 'folder' / 'report.png'
    run_tool('analysis/report.py', results_dir, '--plot', str(figure))
    assert figure.read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
    # the figure is a PNG
    proc = run_tool('analysis/report.py', results_dir, '--plot', str(tmp_path / 'report.pdf'),
                    check=False)
    assert proc.returncode == 2 and '--plot' in proc.stderr and 'FILE.png' in proc.stderr


# ------------------------------------------------------------------------ prompt counts P

@functools.lru_cache(maxsize=None)
def saved_config(path, num_tokens=None):
    """A shipped config as a run saves it (Config.dump's text), with --cfg-options
    model.backbone.prompt.num_tokens=``num_tokens`` when given."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, path), import_custom_modules=False)
    if num_tokens is not None:
        cfg.merge_from_dict({'model.backbone.prompt.num_tokens': num_tokens})
    return cfg.dump()


# A CVPT sweep over P on VTAB-1k, each P in its own work dir (protocol.py --work-dir): the
# tasks present at every P are cifar, dtd and eurosat, whose plain mean is 60 at P=1,
# 197 / 3 at P=10 and 199 / 3 at P=100; clevr_count has a P=10 result only.
SWEEP = {1: dict(cifar=50, dtd=40, eurosat=90),
         10: dict(cifar=60, dtd=45, eurosat=92, clevr_count=70),
         100: dict(cifar=55, dtd=50, eurosat=94)}
SWEEP_MEANS = {1: 60., 10: 197 / 3, 100: 199 / 3}
# cvpt's shipped FGVC configs: one result per task, P differing from task to task.
CVPT_FGVC_P = dict(cub=5, nabirds=200, flowers=5, dogs=10)


def write_saved_vpt_vtab(root):
    """VPT-deep's VTAB-1k results, each with its run's saved config (P = 10)."""
    for task, mean in VPT_VTAB.items():
        write_summary(root, 'vpt', 'vtab', task, mean, VPT_VTAB_TUNED[task],
                      saved=saved_config('configs/vpt/vit-b16_vtab-cifar.py', 10))


def write_saved_fgvc(root):
    """VPT-deep's and CVPT's FGVC results, each with its run's saved config."""
    for task, mean in VPT_FGVC.items():
        write_summary(root, 'vpt', 'fgvc', task, mean, VPT_FGVC_TUNED[task],
                      saved=saved_config('configs/vpt/vit-b16_fgvc-cub.py', 10))
    for task, mean in CVPT_FGVC.items():
        write_summary(root, 'cvpt', 'fgvc', task, mean, CVPT_FGVC_TUNED[task],
                      saved=saved_config('configs/cvpt/vit-b16_fgvc-cub.py', CVPT_FGVC_P[task]))


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
    """VPT-deep at P=10 on all of VTAB-1k and FGVC, the CVPT sweep above, CVPT's FGVC
    results with the shipped per-task P, and a linear probe (no prompt) on cub."""
    root = str(tmp_path_factory.mktemp('sweep'))
    write_saved_vpt_vtab(root)
    for tokens, means in SWEEP.items():
        for task, mean in means.items():
            write_summary(osp.join(root, f'cvpt-p{tokens}'), 'cvpt', 'vtab', task, mean, 0.1,
                          saved=saved_config('configs/cvpt/vit-b16_vtab-cifar.py', tokens))
    write_saved_fgvc(root)
    write_summary(root, 'linear', 'fgvc', 'cub', 85, 0.05,
                  saved=saved_config('configs/linear/vit-b16_fgvc-cub.py'))
    return root


def test_prompt_count_from_the_saved_config(tmp_path):
    write_summary(str(tmp_path), 'cvpt', 'vtab', 'dtd', 50., 0.1)
    summary_path = str(tmp_path / 'cvpt' / 'vit-b16_vtab-dtd' / 'final' / 'summary.json')
    with open(summary_path) as f:
        summary = json.load(f)
    assert prompt_count(summary_path, summary) is None  # nothing saved
    seed_dir = tmp_path / 'cvpt' / 'vit-b16_vtab-dtd' / 'final' / 'seed42'
    # the visualizer's copy, in the run's timestamp folder: used when the runner's is missing
    for stamp, tokens in (('20240101_000000', 3), ('20240102_000000', 7)):
        (seed_dir / stamp / 'vis_data').mkdir(parents=True)
        (seed_dir / stamp / 'vis_data' / 'config.py').write_text(
            f'model = dict(backbone=dict(prompt=dict(num_tokens={tokens})))\n')
    assert prompt_count(summary_path, summary) == 7  # the newest
    (seed_dir / 'vit-b16_vtab-dtd.py').write_text(
        'model = dict(backbone=dict(prompt=dict(num_tokens=12, num_kv_tokens=5)))\n')
    assert prompt_count(summary_path, summary) == 12
    (seed_dir / 'vit-b16_vtab-dtd.py').write_text('model = dict(backbone=dict(type="x"))\n')
    assert prompt_count(summary_path, summary) is None  # no prompt: linear, full
    # a summary that records P needs no saved config, and the name comes with it
    recorded = dict(summary, method_name='CVPT', prompt_type='mmvpt.CVPT', num_tokens=3)
    assert prompt_count(summary_path, recorded) == 3
    with open(summary_path, 'w') as f:
        json.dump(recorded, f)
    assert read_summary(summary_path)['num_tokens'] == 3
    # an old summary: P from the saved config, the name from the method's folder
    with open(summary_path, 'w') as f:
        json.dump(summary, f)
    (seed_dir / 'vit-b16_vtab-dtd.py').write_text(
        'model = dict(backbone=dict(prompt=dict(num_tokens=5)))\n')
    old = read_summary(summary_path)
    assert (old['method_name'], old['num_tokens']) == ('CVPT', 5)


def test_a_row_per_prompt_count(sweep_dir, tmp_path):
    csv_path = str(tmp_path / 'sweep.csv')
    markdown, _ = report_of(sweep_dir, csv_path=csv_path)
    _, vtab = table_rows(markdown, 'VTAB-1k')
    assert list(vtab) == ['VPT-deep', 'CVPT (P=1)', 'CVPT (P=10)', 'CVPT (P=100)']
    assert vtab['VPT-deep']['Mean'] == '66.9'  # one P: unchanged
    for tokens, means in SWEEP.items():
        row = vtab[f'CVPT (P={tokens})']
        assert {task: row[report.HEADERS[task]] for task in means} == {
            task: f'{mean:.1f}' for task, mean in means.items()}
    assert vtab['CVPT (P=1)']['Clevr-Count'] == vtab['CVPT (P=100)']['Clevr-Count'] == '-'
    assert vtab['CVPT (P=1)']['Mean'] == '-'
    vtab_section, fgvc_section = markdown.split('## FGVC')
    assert report.SPLIT_NOTE in vtab_section and report.SPLIT_NOTE not in fgvc_section
    _, fgvc = table_rows(markdown, 'FGVC')
    # per-task P (cvpt) and no prompt (linear) keep a single, unlabelled row
    assert list(fgvc) == ['Linear probing', 'VPT-deep', 'CVPT']
    assert fgvc['CVPT']['Oxford Flowers'] == '99.5'
    with open(csv_path, newline='') as f:
        rows = {(r['benchmark'], r['method'], r['num_tokens']): r for r in csv.DictReader(f)}
    assert set(rows) == {('vtab', 'vpt', '10'), ('vtab', 'cvpt', '1'), ('vtab', 'cvpt', '10'),
                         ('vtab', 'cvpt', '100'), ('fgvc', 'linear', ''), ('fgvc', 'vpt', '10'),
                         ('fgvc', 'cvpt', '')}
    assert float(rows['vtab', 'cvpt', '10']['clevr_count']) == 70.0


def test_same_result_twice_at_one_prompt_count_is_an_error(sweep_dir, tmp_path):
    write_summary(str(tmp_path), 'cvpt', 'vtab', 'dtd', 50., 0.1,
                  saved=saved_config('configs/cvpt/vit-b16_vtab-cifar.py', 10))
    with pytest.raises(report.ReportError, match='two results for cvpt on vtab dtd with P=10'):
        report_of(sweep_dir, str(tmp_path))


def test_one_prompt_count_changes_no_row(results_dir, tmp_path):
    """Saved configs with one P per method (VPT's 10, CVPT's shipped per-task P) give the
    same tables as no saved configs at all, and no accuracy-vs-P panel."""
    root = str(tmp_path)
    write_saved_vpt_vtab(root)
    for i, (task, mean) in enumerate(CVPT_VTAB.items()):
        write_summary(root, 'cvpt', 'vtab', 'cifar100' if task == 'cifar' else task, mean,
                      CVPT_VTAB_TUNED[task],
                      saved=saved_config('configs/cvpt/vit-b16_vtab-cifar.py', (1, 10, 50)[i % 3]))
    write_saved_fgvc(root)
    markdown, _ = report_of(root)
    assert markdown == report_of(results_dir)[0]
    check_tables(markdown)
    fig = report.build_figure(report.load_results(find_summaries([root])))
    assert sorted(ax.get_label() for ax in fig.axes) == [
        'fgvc-means', 'fgvc-tasks', 'vtab-means', 'vtab-tasks']


# ---------------------------------------------------------------------------- the figure

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# figure_size: slot = max(0.5, 0.15 x (table rows + 1)) inches per column; a row of panels
# is (tasks + means) x slot + 2 x 1.0 (axis labels) + 2.0 (legend) [+ 4.5 (P curve)]
# wide, 4.5 high; at 100 dpi. results_dir: VTAB-1k 2 rows -> (19 + 5) x 0.5 + 4 = 16.0,
# FGVC 2 rows -> 6 x 0.5 + 4 = 7.0; 16 x 9 inches.
FIXTURE_PNG_SIZE = (1600, 900)
# sweep_dir: VTAB-1k 4 rows and a P curve -> 24 x 0.75 + 4 + 4.5 = 26.5 (FGVC: 3 rows,
# 6 x 0.6 + 4 = 7.6); 26.5 x 9 inches.
SWEEP_PNG_SIZE = (2650, 900)


def png_size(path):
    """(width, height) from the IHDR chunk of a file that must be a whole PNG."""
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE
    length, kind, width, height = struct.unpack('>I4sII', data[8:24])
    assert (length, kind) == (13, b'IHDR')
    assert data[-12:] == b'\0\0\0\0IEND\xaeB`\x82'
    return width, height


def figure_of(*work_dirs):
    return report.build_figure(report.load_results(find_summaries(list(work_dirs))))


def axes_named(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) <= 1
    return found[0] if found else None


def bar_heights(ax):
    """{'<row label>|<column>': height} of the bars of an axes; every patch must be one."""
    heights = {patch.get_gid(): patch.get_height() for patch in ax.patches}
    assert None not in heights and len(heights) == len(ax.patches)
    return heights


def test_figure_bars_are_the_table_numbers(results_dir):
    fig = figure_of(results_dir)
    assert tuple(fig.get_size_inches()) == (16.0, 9.0)
    # no accuracy-vs-P panel: no P is known (no saved configs)
    assert sorted(ax.get_label() for ax in fig.axes) == [
        'fgvc-means', 'fgvc-tasks', 'vtab-means', 'vtab-tasks']
    # per task; cvpt has no diabetic_retinopathy bar
    assert bar_heights(axes_named(fig, 'vtab-tasks')) == {
        **{f'VPT-deep|{task}': mean for task, mean in VPT_VTAB.items()},
        **{f'CVPT|{task}': mean for task, mean in CVPT_VTAB.items()}}
    # the means the table has, no bar for the ones it leaves out
    assert bar_heights(axes_named(fig, 'vtab-means')) == pytest.approx({
        'VPT-deep|natural': 73., 'VPT-deep|specialized': 83., 'VPT-deep|structured': 53.5,
        'VPT-deep|group_mean': 209.5 / 3, 'VPT-deep|mean': 1271 / 19,
        'CVPT|natural': 63., 'CVPT|structured': 47.})
    assert bar_heights(axes_named(fig, 'fgvc-tasks')) == {
        **{f'VPT-deep|{task}': mean for task, mean in VPT_FGVC.items()},
        **{f'CVPT|{task}': mean for task, mean in CVPT_FGVC.items()}}
    assert bar_heights(axes_named(fig, 'fgvc-means')) == {'VPT-deep|mean': 87.}
    # tasks in the table's order
    assert [t.get_text() for t in axes_named(fig, 'vtab-tasks').get_xticklabels()] == [
        report.HEADERS[task] for task in VTAB_ORDER]


def test_accuracy_vs_prompt_count(sweep_dir, tmp_path):
    fig = figure_of(sweep_dir)
    assert tuple(fig.get_size_inches()) == (26.5, 9.0)
    ax = axes_named(fig, 'vtab-prompts')
    (line,) = ax.get_lines()  # cvpt's; vpt has one P
    assert list(line.get_xdata()) == [1, 10, 100]
    assert list(line.get_ydata()) == pytest.approx([SWEEP_MEANS[p] for p in (1, 10, 100)])
    assert line.get_label() == 'CVPT (3 tasks)'
    assert ax.get_xscale() == 'log'
    # FGVC: per-task P and one P per method, no curve
    assert axes_named(fig, 'fgvc-prompts') is None
    heights = bar_heights(axes_named(fig, 'vtab-tasks'))
    assert heights['CVPT (P=10)|clevr_count'] == 70
    assert 'CVPT (P=1)|clevr_count' not in heights
    assert {key: heights[key] for key in heights if key.startswith('CVPT')} == {
        f'CVPT (P={tokens})|{task}': mean
        for tokens, means in SWEEP.items() for task, mean in means.items()}
    assert bar_heights(axes_named(fig, 'fgvc-tasks'))['Linear probing|cub'] == 85

    png = str(tmp_path / 'sweep.png')
    report.write_figure(report.load_results(find_summaries([sweep_dir])), png)
    assert png_size(png) == SWEEP_PNG_SIZE


def test_prompt_curve_over_the_common_tasks_only():
    def runs(means):
        return {task: dict(mean=mean) for task, mean in means.items()}
    by_row = {report.RowKey('cvpt', 5, True): runs(dict(cub=80, dogs=70, cars=60)),
              report.RowKey('cvpt', 50, True): runs(dict(cub=90, dogs=50)),
              report.RowKey('vpt', 10, False): runs(dict(cub=1, dogs=1, cars=1))}
    assert report.prompt_curves(by_row, report.FGVC_TASKS) == {
        'cvpt': (['cub', 'dogs'], [(5, 75.), (50, 70.)])}
    # a single P, or P unknown, is no curve
    by_row = {report.RowKey('cvpt', 5, True): runs(dict(cub=80)),
              report.RowKey('cvpt', None, True): runs(dict(cub=90))}
    assert report.prompt_curves(by_row, report.FGVC_TASKS) == {}


@pytest.mark.tools
def test_the_tables_alone_do_not_import_matplotlib(results_dir):
    proc = subprocess.run([sys.executable, '-X', 'importtime',
                           osp.join(ROOT, 'tools/analysis/report.py'), results_dir],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = [line.split('|')[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith('import time:')]
    assert 'mmvpt.analysis.report' in imported  # the import log is complete
    assert not [name for name in imported if name.split('.')[0] == 'matplotlib']
    assert '## VTAB-1k' in proc.stdout


# ------------------------------------------------------------------- summaries that record P

def test_recorded_method_and_prompt_count_need_no_saved_config(sweep_dir, tmp_path):
    """Summaries as tools/protocol.py writes them now (method name, prompt type and P
    recorded): the same tables as the sweep's older summaries with saved configs."""
    root = str(tmp_path)
    for tokens, means in SWEEP.items():
        for task, mean in means.items():
            write_summary(osp.join(root, f'cvpt-p{tokens}'), 'cvpt', 'vtab', task, mean, 0.1,
                          record=dict(method_name='CVPT', prompt_type='mmvpt.CVPT',
                                      num_tokens=tokens))
    for task, mean in VPT_VTAB.items():
        write_summary(root, 'vpt', 'vtab', task, mean, VPT_VTAB_TUNED[task],
                      record=dict(method_name='VPT-deep', prompt_type='mmvpt.VPT', num_tokens=10))
    for task, mean in VPT_FGVC.items():
        write_summary(root, 'vpt', 'fgvc', task, mean, VPT_FGVC_TUNED[task],
                      record=dict(method_name='VPT-deep', prompt_type='mmvpt.VPT', num_tokens=10))
    for task, mean in CVPT_FGVC.items():
        write_summary(root, 'cvpt', 'fgvc', task, mean, CVPT_FGVC_TUNED[task],
                      record=dict(method_name='CVPT', prompt_type='mmvpt.CVPT',
                                  num_tokens=CVPT_FGVC_P[task]))
    write_summary(root, 'linear', 'fgvc', 'cub', 85, 0.05,
                  record=dict(method_name='Linear probing', prompt_type=None, num_tokens=None))
    assert not glob.glob(osp.join(root, '**', 'seed*'), recursive=True)  # no saved configs
    assert report_of(root) == report_of(sweep_dir)
    # the recorded name labels the rows, whatever the folder
    write_summary(osp.join(root, 'mine'), 'my_runs', 'fgvc', 'dogs', 50, 0.1,
                  record=dict(method_name='VPT-shallow', prompt_type='mmvpt.VPT', num_tokens=5))
    assert list(table_data(root)['fgvc']) == ['Linear probing', 'VPT-deep', 'CVPT', 'VPT-shallow']


def test_what_protocol_records_of_a_config():
    from mmengine.config import Config

    def record(name, **options):
        cfg = Config.fromfile(osp.join(ROOT, 'configs', name), import_custom_modules=False)
        cfg.merge_from_dict(options)
        return method_record(cfg.model)
    assert record('cvpt/vit-b16_vtab-dtd.py') == dict(
        method_name='CVPT', prompt_type='mmvpt.CVPT', num_tokens=10)
    assert record('cvpt/vit-b16_vtab-dtd.py', **{'model.backbone.prompt.num_tokens': 50})[
        'num_tokens'] == 50
    assert record('vpt/vit-b16_fgvc-cub.py', **{'model.backbone.prompt.deep': False}) == dict(
        method_name='VPT-shallow', prompt_type='mmvpt.VPT', num_tokens=10)
    assert record('e2vpt/vit-b16_vtab-caltech101.py')['method_name'] == 'E2VPT'
    assert record('ivpt/vit-b16_vtab-dtd.py')['method_name'] == 'iVPT'
    assert record('linear/vit-b16_fgvc-cub.py') == dict(
        method_name='Linear probing', prompt_type=None, num_tokens=None)
    assert record('full/vit-b16_fgvc-cub.py')['method_name'] == 'Full fine-tuning'
    info = dict(config='c.py', method='cvpt', benchmark='vtab', task='dtd',
                **record('cvpt/vit-b16_vtab-dtd.py'))
    summary = final_summary(info, dict(final_train='train800val200', test='test'), 0.1, 0.,
                            'grid', {42: 70., 44: 72.}, 100, 10000, 'w')
    assert (summary['method_name'], summary['prompt_type'], summary['num_tokens']) == (
        'CVPT', 'mmvpt.CVPT', 10)
    assert summary['seeds'] == [42, 44] and summary['test_accuracy'] == {'42': 70., '44': 72.}
    assert summary['mean'] == 71. and summary['std'] == pytest.approx(2 ** 0.5)
    assert summary['tuned_percent'] == 1.


def test_adapter_baselines_get_their_rows(tmp_path):
    """Summaries in the adapter-style baselines' method folders make rows named by the
    method, in method_folders()' order, with their means."""
    for method, offset in (('lora', 0.), ('bitfit', -5.)):
        for index, task in enumerate(report.FGVC_TASKS):
            write_summary(str(tmp_path), method, 'fgvc', task, 80. + index + offset, 0.5)
    _, table = table_rows(report_of(str(tmp_path))[0], 'FGVC')
    assert list(table) == ['LoRA', 'BitFit']  # method_folders()' order
    assert table['LoRA']['Mean'] == '82.0' and table['BitFit']['Mean'] == '77.0'


def test_chosen_values_are_shown_beside_the_accuracy(tmp_path):
    """Under each table, the values each result trained with (what the protocol chose)."""
    root = str(tmp_path)
    write_summary(root, 'vpt', 'vtab', 'dtd', 60., 0.1, record=dict(
        method_name='VPT-deep', prompt_type='mmvpt.VPT', num_tokens=50,
        chosen=dict(num_tokens=50, lr=0.625, wd=0.0001)))
    write_summary(root, 'e2vpt', 'vtab', 'cifar', 70., 0.1, record=dict(
        method_name='E2VPT', prompt_type='mmvpt.E2VPT', num_tokens=5,
        chosen=dict(lr=1.25, wd=0., masked_tokens=2, masked_pieces=8)))
    write_summary(root, 'cvpt', 'fgvc', 'cub', 90., 0.1)  # written before choices were recorded
    markdown, _ = report_of(root)
    assert '### FGVC: the values chosen' not in markdown  # no FGVC result records any
    section = markdown.split('### VTAB-1k: the values chosen\n', 1)[1]
    lines = [line for line in section.split('\n') if line.startswith('|')]
    headers = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = {cells[0]: dict(zip(headers[1:], cells[1:])) for cells in (
        [cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:])}
    assert rows['VPT-deep']['DTD'] == 'P 50, lr 0.625, wd 0.0001'
    assert rows['VPT-deep']['CIFAR-100'] == '-'
    assert rows['E2VPT']['CIFAR-100'] == 'lr 1.25, wd 0, masked tokens 2, masked pieces 8'
