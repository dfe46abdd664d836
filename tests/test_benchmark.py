"""tools/analysis/benchmark.py on tiny ViT and Swin configs: the rows it measures (as data),
the table it prints of them, its profile of a train step. Never timings (they depend on the
machine); FLOPs, parameters, saved bytes, dtypes and op counts are deterministic."""
import importlib.util
import inspect
import json
import math
import os.path as osp

import pytest
import torch

from mmvpt.models import PromptedSwin, PromptedViT

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_VIT = ['--arch', 'vit_base_patch16_224', '--img-size', '32', '--arch-cfg',
            json.dumps(dict(embed_dim=32, depth=2, num_heads=2, patch_size=8))]
TINY_SWIN = ['--arch', 'swin_tiny_patch4_window7_224', '--img-size', '32', '--arch-cfg',
             json.dumps(dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4))]
FAST = ['--prompts', '0,4', '--steps', '1', '--device', 'cpu']
HEAD = 32 * 100 + 100  # the tiny ViT's 100-class linear head: weight and bias
PROMPTS = 2 * 4 * 32  # VPT-deep / CVPT at P=4: 4 tokens of width 32 in each of the 2 blocks


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        'benchmark_tool', osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_benchmark()


def rows_of(*argv, batch=2):
    """``measure_rows`` of the one (arch, image size) the options name, and the options."""
    args = bench.parse_args(list(argv))
    return bench.measure_rows(args.arch[0], args.img_size[0], batch, args), args


def by_method(rows):
    return {(r['method'], r['P']): r for r in rows}


def tiny_vit_bytes(embed, depth, patch, img):
    """Parameter bytes of timm's ViT at this size, counted by hand (float32, no buffers):
    patch embedding, CLS token, position embedding, blocks (LN, qkv, proj, LN, MLP 4x),
    final LN."""
    tokens = (img // patch) ** 2 + 1
    block = 2 * embed + 3 * embed * embed + 3 * embed + embed * embed + embed + 2 * embed \
        + 4 * embed * embed + 4 * embed + 4 * embed * embed + embed
    return 4 * (3 * patch * patch * embed + embed + embed + tokens * embed + depth * block + 2 * embed)


def test_tiny_vit_rows():
    rows, _ = rows_of(*TINY_VIT, *FAST, '--methods', 'linear,none,full,vpt,cvpt')
    assert [(r['method'], r['name'], r['P']) for r in rows] == [
        ('linear', 'linear probing', 0), ('none', 'none (frozen)', 0), ('full', 'full fine-tuning', 0),
        ('vpt', 'VPT-deep', 4), ('cvpt', 'CVPT, batch dropout', 4)]
    row = by_method(rows)
    linear, none, full, vpt = row['linear', 0], row['none', 0], row['full', 0], row['vpt', 4]
    # what AdamW steps: the head alone, every weight, the prompts and the head
    assert linear['tuned'] == none['tuned'] == HEAD
    assert full['tuned'] == tiny_vit_bytes(embed=32, depth=2, patch=8, img=32) // 4 + HEAD
    assert vpt['tuned'] == row['cvpt', 4]['tuned'] == PROMPTS + HEAD
    # P=0 is forward + input gradients (about 2 forwards); linear probing has no backward
    # through the blocks (about 1), full fine-tuning adds the weight gradients (about 3)
    assert none['flops_x_p0'] == 1 and none['seconds_x_p0'] == 1 and none['memory_x_p0'] == 1
    assert linear['flops'] < 0.6 * none['flops']
    assert full['flops'] > 1.3 * none['flops']
    assert vpt['flops'] > none['flops'] and vpt['flops_x_p0'] == vpt['flops'] / none['flops']
    # linear probing holds only the head's input for backward: the CLS rows of the final
    # LayerNorm's output, a view that keeps all of it (2 samples, 16 patches + CLS, 32 wide)
    assert linear['memory'] == 2 * 17 * 32 * 4
    assert full['seconds_x_full'] == 1 and full['memory_x_full'] == 1
    for r in rows:
        assert math.isfinite(r['seconds']) and r['seconds'] > 0
        assert r['seconds_x_full'] == r['seconds'] / full['seconds']
        assert r['memory_x_full'] == r['memory'] / full['memory']
        assert r['seconds_x_p0'] == r['seconds'] / none['seconds']


def test_tiny_swin_rows():
    rows, _ = rows_of(*TINY_SWIN, *FAST, '--methods', 'vpt,cvpt,ivpt,full')
    # the reference first (0 in --prompts); Swin has no CLS token: iVPT without AR
    assert [(r['name'], r['P']) for r in rows] == [
        ('none (frozen)', 0), ('VPT-deep', 4), ('CVPT, batch dropout', 4), ('iVPT (no AR)', 4),
        ('full fine-tuning', 0)]
    row = by_method(rows)
    model = bench.build('swin_tiny_patch4_window7_224', 'full', img_size=32,
                        arch_cfg=bench.parse_args(TINY_SWIN).arch_cfg)
    assert row['full', 0]['tuned'] == sum(p.numel() for p in model.parameters())
    assert row['none', 0]['tuned'] == 16 * 2 * 100 + 100  # the head on Swin's 32 features
    assert row['vpt', 4]['flops_x_p0'] > 1 and row['full', 0]['flops_x_p0'] > 1
    assert all('cp_memory' not in r for r in rows)


def test_rows_only_when_asked():
    rows, _ = rows_of(*TINY_VIT, '--prompts', '4', '--steps', '1', '--methods', 'vpt')
    # the reference is measured (for x P=0) but not a row; full is not measured at all
    assert [(r['method'], r['P']) for r in rows] == [('vpt', 4)]
    assert rows[0]['flops_x_p0'] > 1
    assert rows[0]['seconds_x_full'] is None and rows[0]['memory_x_full'] is None


@pytest.mark.parametrize('tiny', [TINY_VIT, TINY_SWIN], ids=['vit', 'swin'])
def test_with_cp_rows(tiny):
    backbone = PromptedSwin if tiny is TINY_SWIN else PromptedViT
    if 'with_cp' not in inspect.signature(backbone).parameters:
        pytest.skip(f'{backbone.__name__} has no with_cp option yet')
    rows, _ = rows_of(*tiny, *FAST, '--methods', 'none,vpt', '--with-cp')
    assert [(r['method'], r['P']) for r in rows] == [('none', 0), ('vpt', 4)]
    for row in rows:
        # checkpointing keeps each block's input only
        assert row['cp_memory'] < row['memory']
        assert row['cp_x_no_cp'] == row['cp_memory'] / row['memory'] < 1


def test_printed_table_is_the_rows(capsys):
    args = bench.parse_args(TINY_VIT + FAST + ['--methods', 'none,full,vpt', '--with-cp'])
    rows = bench.benchmark('vit_base_patch16_224', 32, 2, args)
    title, header, rule, *lines = capsys.readouterr().out.strip().splitlines()
    assert title.startswith('vit_base_patch16_224, 32 px, batch 2, cpu (')
    assert f'threads), fp32, eager, torch {torch.__version__}, arch_cfg' in title
    cells = lambda line: [c.strip() for c in line.strip('|').split('|')]  # noqa: E731
    assert cells(header) == ['method', 'P', 'tuned params', 'train GFLOPs', 'x P=0', 'step s', 'x P=0',
                             'x full', 'saved act. MiB', 'x P=0', 'x full', 'with_cp MiB', 'x no cp']
    assert rule.count('|') == len(cells(header)) + 1
    assert [cells(line) for line in lines] == [[
        r['name'], str(r['P']), f'{r["tuned"]:,}', bench._short(r['flops'] / 1e9),
        f'{r["flops_x_p0"]:.3f}', f'{r["seconds"]:.4g}', f'{r["seconds_x_p0"]:.2f}',
        f'{r["seconds_x_full"]:.2f}', bench._short(r['memory'] / 2**20), f'{r["memory_x_p0"]:.2f}',
        f'{r["memory_x_full"]:.2f}', bench._short(r['cp_memory'] / 2**20), f'{r["cp_x_no_cp"]:.2f}']
        for r in rows]
    assert [line[1] for line in map(cells, lines)] == ['0', '0', '4']
    assert cells(lines[1])[7] == cells(lines[1])[10] == '1.00'  # full over full


def test_amp_bf16_runs_the_forward_in_bf16(monkeypatch):
    """The step's forward runs under autocast: a block's qkv projection puts out bfloat16 (in
    the FLOP count, the saved-bytes pass and the timed steps), and the FLOPs are those of the
    float32 step."""
    seen = []

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.backbone.timm_model.blocks[0].attn.qkv.register_forward_hook(
            lambda m, i, out: seen.append(out.dtype))
        return model
    real_build = bench.build
    monkeypatch.setattr(bench, 'build', build)
    fp32, _ = rows_of(*TINY_VIT, *FAST, '--methods', 'none')
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16, args = rows_of(*TINY_VIT, *FAST, '--methods', 'none', '--amp', 'bf16')
    assert args.amp is torch.bfloat16
    # the FLOP step, the saved-bytes pass, one warm-up, one timed step
    assert seen == [torch.bfloat16] * 4
    assert bf16[0]['flops'] == fp32[0]['flops']
    assert bf16[0]['memory'] != fp32[0]['memory']
    # as MMEngine's AmpOptimWrapper: a GradScaler on GPU; on CPU for float16 only
    assert bench.grad_scaler('cpu', torch.bfloat16) is None
    assert bench.grad_scaler('cpu', None) is None


COMPILED_GRAPHS = []


def counting_aot_eager(gm, example_inputs):
    """aot_eager that records the graphs dynamo hands it."""
    COMPILED_GRAPHS.append(gm)
    return torch._dynamo.lookup_backend('aot_eager')(gm, example_inputs)


def test_compile_rows():
    if 'counting_aot_eager' not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(counting_aot_eager, name='counting_aot_eager')
    COMPILED_GRAPHS.clear()
    eager, _ = rows_of(*TINY_VIT, *FAST, '--methods', 'none,vpt')
    rows, args = rows_of(*TINY_VIT, *FAST, '--methods', 'none,vpt', '--compile',
                         '--compile-backend', 'counting_aot_eager')
    assert args.warmup == 2
    assert COMPILED_GRAPHS  # dynamo captured the model
    assert [(r['method'], r['P']) for r in rows] == [('none', 0), ('vpt', 4)]
    for row, eager_row in zip(rows, eager):
        assert math.isfinite(row['seconds']) and row['seconds'] > 0 and row['first_seconds'] > 0
        # counted on the eager model: compiled kernels are no aten ops to count
        assert row['flops'] == eager_row['flops']
    assert bench.setting(args).split(', ')[2] == 'torch.compile (counting_aot_eager)'


def test_profile_step(capsys):
    args = bench.parse_args(TINY_VIT + ['--steps', '1', '--device', 'cpu'])
    arch, img = args.arch[0], args.img_size[0]
    none = bench.profile_step(arch, img, 2, 'none', 0, args)
    vpt = bench.profile_step(arch, img, 2, 'vpt', 4, args)
    assert 0 < none['num_outer_ops'] < none['num_ops']
    assert vpt['num_ops'] >= none['num_ops'] and vpt['num_outer_ops'] >= none['num_outer_ops']
    assert none['num_kernels'] == vpt['num_kernels'] == 0  # no CUDA here
    # the kernel each attention got: one forward and one backward per block (2), on CPU
    cpu_attention = 'aten::_scaled_dot_product_flash_attention_for_cpu'
    assert none['attention'] == vpt['attention'] == {cpu_attention: 2, cpu_attention + '_backward': 2}
    assert vpt['sort'] == 'self_cpu_us' and 0 < len(vpt['top']) <= 15
    self_cpu = [cpu for _, _, cpu, _ in vpt['top']]
    assert self_cpu == sorted(self_cpu, reverse=True) and self_cpu[0] > 0
    assert any(name.startswith('aten::') for name, *_ in vpt['top'])
    bench.print_profile(arch, img, 2, vpt, args)
    out = capsys.readouterr().out
    assert 'profile of one train step: VPT-deep P=4, vit_base_patch16_224, 32 px, batch 2' in out
    assert f'{vpt["num_ops"]:,} aten op calls ({vpt["num_outer_ops"]:,} outermost)' in out
    assert '| event | calls | self CPU ms | self CUDA ms |' in out
    assert f'attention kernels: {cpu_attention} x2, {cpu_attention}_backward x2' in out
    assert out.count(f'| {vpt["top"][0][0]} | {vpt["top"][0][1]} |') == 1


def test_cli_prints_the_profile_after_the_table(capsys):
    bench.main(TINY_VIT + ['--prompts', '0', '--steps', '1', '--device', 'cpu', '--batch', '1',
                           '--methods', 'linear', '--profile', 'linear:0', '--profile', 'cvpt:4'])
    out = capsys.readouterr().out
    # the reference first: 0 is in --prompts
    assert out.index('| none (frozen) | 0 | 3,300 |') < out.index('| linear probing | 0 | 3,300 |') \
        < out.index('profile of one train step: linear probing P=0') \
        < out.index('profile of one train step: CVPT, batch dropout P=4')


@pytest.mark.parametrize('args, message', [
    (['--methods', 'vpt,deep'], '--methods deep: choose from'),
    (['--arch-cfg', '[1, 2]'], '--arch-cfg: a JSON object'),
    (['--prompts', '0,-1'], '--prompts: counts must be >= 0'),
    (['--amp', 'fp8'], "argument --amp: invalid choice: 'fp8'"),
    (['--profile', 'foo:1'], "--profile: foo:1: unknown method 'foo'"),
    (['--profile', 'vpt'], '--profile: vpt: give METHOD:P, e.g. vpt:10'),
    (['--profile', 'vpt:x'], '--profile: vpt:x: give METHOD:P'),
    (['--profile', 'full:4'], '--profile: full:4: full has no prompts; use full:0'),
    (['--profile', 'cvpt:0'], '--profile: cvpt:0: a prompt method needs P > 0'),
    (['--compile-backend', 'eager'], '--compile-backend: needs --compile'),
    (['--compile', '--compile-backend', 'no_such_backend'], '--compile-backend no_such_backend: choose'),
    (['--warmup', '0'], '--warmup: at least 1'),
])
def test_bad_options_are_refused(capsys, args, message):
    with pytest.raises(SystemExit):
        bench.parse_args(args)
    assert message in capsys.readouterr().err


def test_amp_without_autocast_support_is_refused(capsys, monkeypatch):
    """A torch without float16 autocast on CPU says so rather than timing float32."""
    monkeypatch.setattr(bench, 'autocast_supported', lambda device, amp: False)
    with pytest.raises(SystemExit):
        bench.parse_args(['--amp', 'fp16', '--device', 'cpu'])
    assert '--amp fp16: torch ' in capsys.readouterr().err


# -- --multitask: its tables, parsed from stdout -------------------------------------------
def run_tables(capsys, *args):
    """The printed tables: (title, rows), each row a dict by column name; a ratio column
    ('x one model') is named after the column before it ('weights bytes x one model')."""
    bench.main(list(args))
    tables, title, columns = [], None, None
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith('|'):
            title = line.strip() or title
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if cells[0] == 'setup':
            columns = [f'{before} {name}' if name.startswith('x ') else name
                       for before, name in zip([''] + cells, cells)]
            tables.append((title, []))
        elif not cells[0].startswith('---'):
            tables[-1][1].append(dict(zip(columns, cells)))
    return tables


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
    task = 4 * (PROMPTS + HEAD)
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
    (['--multitask', '4', '--methods', 'none,linear,full'], '--multitask: needs a prompt method'),
    (['--multitask', '4', '--prompts', '0'], '--multitask: needs a prompt method'),
    (['--multitask', '4', '--amp', 'bf16', '--device', 'cpu'],
     '--amp, --compile and --profile do not apply'),
    (['--multitask', '4', '--profile', 'vpt:4'], '--amp, --compile and --profile do not apply'),
    (['--cpu-time'], '--cpu-time: for --multitask on --device cpu'),
    (['--multitask', '4', '--cpu-time', '--threads', '2', '--device', 'cpu'], '--cpu-time: counts one thread'),
])
def test_bad_multitask_options_are_refused(capsys, args, message):
    with pytest.raises(SystemExit):
        bench.parse_args(args)
    assert message in capsys.readouterr().err
