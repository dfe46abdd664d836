"""tools/analysis/benchmark.py on tiny ViT and Swin configs: the tables it prints. Never
timings (they depend on the machine); FLOPs, parameters and saved bytes are deterministic."""
import importlib.util
import inspect
import json
import os.path as osp

import pytest

from mmvpt.models import PromptedSwin, PromptedViT

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_VIT = ['--arch', 'vit_base_patch16_224', '--img-size', '32', '--arch-cfg',
            json.dumps(dict(embed_dim=32, depth=2, num_heads=2, patch_size=8))]
TINY_SWIN = ['--arch', 'swin_tiny_patch4_window7_224', '--img-size', '32', '--arch-cfg',
             json.dumps(dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4))]
FAST = ['--prompts', '0,4', '--steps', '1', '--device', 'cpu']


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        'benchmark_tool', osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tables(capsys, *args):
    """The printed tables: (title, rows), each row a dict by column name; a ratio column
    ('x P=0') is named after the column before it ('train GFLOPs x P=0'). --multitask
    tables start with a 'setup' column."""
    load_benchmark().main(list(args))
    tables, title, columns = [], None, None
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith('|'):
            title = line.strip() or title
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if cells[0] in ('method', 'setup'):
            columns = [f'{before} {name}' if name.startswith('x ') else name
                       for before, name in zip([''] + cells, cells)]
            tables.append((title, []))
        elif not cells[0].startswith('---'):
            tables[-1][1].append(dict(zip(columns, cells)))
    return tables


def check_reference_and_vpt(rows):
    reference, vpt = rows[0], rows[1]
    assert (reference['method'], reference['P'], reference['tuned params']) == ('none (frozen)', '0', '0')
    assert reference['train GFLOPs x P=0'] == '1.000'
    assert vpt['method'] == 'VPT-deep' and vpt['P'] == '4'
    assert float(vpt['train GFLOPs']) > float(reference['train GFLOPs'])
    assert float(vpt['train GFLOPs x P=0']) > 1


def test_tiny_vit_table(capsys):
    tables = run_tables(capsys, *TINY_VIT, *FAST, '--methods', 'vpt,cvpt', '--batch', '1,2')
    assert [title.split(', ')[:3] for title, _ in tables] == [
        ['vit_base_patch16_224', '32 px', 'batch 1'], ['vit_base_patch16_224', '32 px', 'batch 2']]
    for _, rows in tables:
        assert [(r['method'], r['P']) for r in rows] == [
            ('none (frozen)', '0'), ('VPT-deep', '4'), ('CVPT, batch dropout', '4')]
        check_reference_and_vpt(rows)
        # VPT-deep and CVPT: P tokens of width 32 in each of the 2 blocks
        assert rows[1]['tuned params'] == rows[2]['tuned params'] == '256'


def test_tiny_swin_table(capsys):
    (title, rows), = run_tables(capsys, *TINY_SWIN, *FAST, '--batch', '2',
                                '--methods', 'vpt,cvpt,ivpt')
    assert title.startswith('swin_tiny_patch4_window7_224, 32 px, batch 2, cpu')
    # Swin has no CLS token: iVPT without AR
    assert [(r['method'], r['P']) for r in rows] == [
        ('none (frozen)', '0'), ('VPT-deep', '4'), ('CVPT, batch dropout', '4'), ('iVPT (no AR)', '4')]
    check_reference_and_vpt(rows)
    assert 'with_cp MiB' not in rows[0]


def test_reference_row_only_when_asked(capsys):
    (_, rows), = run_tables(capsys, *TINY_VIT, '--prompts', '4', '--steps', '1', '--batch', '1',
                            '--methods', 'vpt')
    assert [(r['method'], r['P']) for r in rows] == [('VPT-deep', '4')]


@pytest.mark.parametrize('tiny', [TINY_VIT, TINY_SWIN], ids=['vit', 'swin'])
def test_with_cp_column(capsys, tiny):
    backbone = PromptedSwin if tiny is TINY_SWIN else PromptedViT
    if 'with_cp' not in inspect.signature(backbone).parameters:
        pytest.skip(f'{backbone.__name__} has no with_cp option yet')
    (_, rows), = run_tables(capsys, *tiny, *FAST, '--batch', '2', '--methods', 'vpt', '--with-cp')
    assert [(r['method'], r['P']) for r in rows] == [('none (frozen)', '0'), ('VPT-deep', '4')]
    for row in rows:
        # checkpointing keeps each block's input only
        assert float(row['with_cp MiB']) < float(row['saved act. MiB'])
        assert 0 < float(row['with_cp MiB x no cp']) < 1


@pytest.mark.parametrize('args, message', [
    (['--methods', 'vpt,deep'], '--methods deep: choose from'),
    (['--arch-cfg', '[1, 2]'], '--arch-cfg: a JSON object'),
    (['--prompts', '0,-1'], '--prompts: counts must be >= 0'),
])
def test_bad_options_are_refused(capsys, args, message):
    with pytest.raises(SystemExit):
        load_benchmark().parse_args(args)
    assert message in capsys.readouterr().err


def tiny_vit_bytes(embed, depth, patch, img):
    """Parameter bytes of timm's ViT at this size, counted by hand (float32, no buffers):
    patch embedding, CLS token, position embedding, blocks (LN, qkv, proj, LN, MLP 4x),
    final LN."""
    tokens = (img // patch) ** 2 + 1
    block = 2 * embed + 3 * embed * embed + 3 * embed + embed * embed + embed + 2 * embed \
        + 4 * embed * embed + 4 * embed + 4 * embed * embed + embed
    return 4 * (3 * patch * patch * embed + embed + embed + tokens * embed + depth * block + 2 * embed)


@pytest.mark.parametrize('timing', [[], ['--cpu-time']], ids=['wall', 'cpu_time'])
def test_multitask_table(capsys, timing):
    """One backbone for N tasks holds the backbone once and N tasks' prompts and heads; N
    separate models hold N of everything."""
    tables = run_tables(capsys, *TINY_VIT, '--multitask', '1,3', '--methods', 'cvpt,vpt',
                        '--prompts', '4', '--batch', '4', '--steps', '1', '--device', 'cpu', *timing)
    rate = 'images/CPU-s' if timing else 'images/s'
    assert [title.split(', ')[:4] for title, _ in tables] == [
        ['vit_base_patch16_224', '32 px', 'batch 4', 'CVPT'],
        ['vit_base_patch16_224', '32 px', 'batch 4', 'VPT-deep P=4']]
    assert 'batch dropout P=4' in tables[0][0] and 'eval, no grad' in tables[0][0]
    backbone = tiny_vit_bytes(embed=32, depth=2, patch=8, img=32)
    task = 4 * (2 * 4 * 32 + 100 * 32 + 100)  # CVPT / VPT-deep: P=4 of width 32 in 2 blocks; head
    for _, rows in tables:
        assert [(r['setup'], r['tasks'], r['backbones']) for r in rows] == [
            ('one model, single-task batch', '1', '1'),
            ('MultiTaskModel, mixed batch', '1', '1'), ('separate models, one per task', '1', '1'),
            ('MultiTaskModel, mixed batch', '3', '1'), ('separate models, one per task', '3', '3')]
        expected = [backbone + task, backbone + task, backbone + task,
                    backbone + 3 * task, 3 * (backbone + task)]
        assert [int(r['weights bytes'].replace(',', '')) for r in rows] == expected
        assert [float(r['weights bytes x one model']) for r in rows] == [
            round(e / expected[0], 3) for e in expected]
        assert rows[0][f'{rate} x single-task batch'] == '1.00'
        assert all(float(r[rate]) > 0 for r in rows)


@pytest.mark.parametrize('args, message', [
    (['--multitask', '0,4'], '--multitask: task counts must be >= 1'),
    (['--multitask', '4', '--methods', 'none'], '--multitask: needs a prompt method'),
    (['--multitask', '4', '--prompts', '0'], '--multitask: needs a prompt method'),
    (['--cpu-time'], '--cpu-time: for --multitask on --device cpu'),
    (['--multitask', '4', '--cpu-time', '--threads', '2', '--device', 'cpu'], '--cpu-time: counts one thread'),
])
def test_bad_multitask_options_are_refused(capsys, args, message):
    with pytest.raises(SystemExit):
        load_benchmark().parse_args(args)
    assert message in capsys.readouterr().err
