"""tools/analysis/report.py on hand-written final/summary.json files: group means, group
mean, plain mean, tuned %, '-' for missing tasks, and the CSV at full precision."""
import csv
import importlib.util
import json
import os
import os.path as osp

import pytest

from .conftest import ROOT, run_tool

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


def load_report_tool():
    spec = importlib.util.spec_from_file_location(
        'mmvpt_report_tool', osp.join(ROOT, 'tools/analysis/report.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report_tool()


def write_summary(root, method, benchmark, task, mean, tuned_percent, folder_task=None):
    """A final/summary.json as tools/protocol.py writes it, in its default layout."""
    folder = osp.join(root, method, f'vit-b16_{benchmark}-{folder_task or task}', 'final')
    os.makedirs(folder, exist_ok=True)
    accuracies = {'42': mean - 1, '44': mean + 1}  # their mean is ``mean``
    summary = dict(config=f'configs/{method}/vit-b16_{benchmark}-{task}.py', method=method,
                   benchmark=benchmark, task=task, lr=0.1, wd=0.0, seeds=[42, 44],
                   test_accuracy=accuracies, mean=float(mean), std=1.4142135623730951,
                   tuned_params=100, total_params=10000, tuned_percent=tuned_percent)
    with open(osp.join(folder, 'summary.json'), 'w') as f:
        json.dump(summary, f)


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


def test_report_as_a_function(results_dir, tmp_path, capsys):
    csv_path = str(tmp_path / 'results.csv')
    markdown, _ = report.main([results_dir, '--csv', csv_path])
    assert capsys.readouterr().out == markdown
    check_tables(markdown)
    check_csv(csv_path)


def test_report_as_a_script(results_dir, tmp_path):
    csv_path, md_path = str(tmp_path / 'results.csv'), str(tmp_path / 'results.md')
    proc = run_tool('analysis/report.py', results_dir, '--markdown', md_path, '--csv', csv_path)
    with open(md_path) as f:
        assert f.read() == proc.stdout
    check_tables(proc.stdout)
    check_csv(csv_path)


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
        report.main([results_dir, str(tmp_path)])


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(report.ReportError, match='no final/summary.json'):
        report.main([str(tmp_path)])
