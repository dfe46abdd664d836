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
    ('x P=0') is named after the column before it ('train GFLOPs x P=0')."""
    load_benchmark().main(list(args))
    tables, title, columns = [], None, None
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith('|'):
            title = line.strip() or title
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if cells[0] == 'method':
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
