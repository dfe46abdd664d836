"""mmvpt.analysis.benchmark on tiny ViT and Swin configs: the rows it measures (as data),
its profile of a train step, the serving rows of --multitask, and tools/analysis/benchmark.py
printing them. Never timings (they depend on the machine); FLOPs, parameters, saved bytes,
dtypes and op counts are deterministic."""
import functools
import math
import re
import types

import pytest
import torch

from mmvpt.analysis import benchmark as bench

from tests.conftest import ROOT, run_tool
from tests.helpers.tiny_models import SWIN, VIT, swin_arch, vit_arch

TINY_VIT_CFG = vit_arch(depth=2, num_heads=2)
TINY_SWIN_CFG = swin_arch(depths=[2, 2], num_heads=[2, 4])  # lists, as JSON gives them
# (arch, image size, options)
TINY_VIT = (VIT, 32, dict(arch_cfg=TINY_VIT_CFG))
TINY_SWIN = (SWIN, 32, dict(arch_cfg=TINY_SWIN_CFG))
FAST = dict(prompts=[0, 4], steps=1, device='cpu')
HEAD = 32 * 100 + 100  # the tiny ViT's 100-class linear head: weight and bias
PROMPTS = 2 * 4 * 32  # VPT-deep / CVPT at P=4: 4 tokens of width 32 in each of the 2 blocks
# the same on the command line
TINY_VIT_ARGS = ['--arch', 'vit_base_patch16_224', '--img-size', '32', '--arch-cfg',
                 '{"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}']


def options(*parts, **more):
    """Checked options from dicts of options, the later ones overriding."""
    merged = {}
    for part in parts:
        merged.update(part)
    merged.update(more)
    return bench.check_options(bench.BenchmarkOptions(**merged))


def rows_of(tiny, *parts, batch=2, **more):
    """``measure_rows`` of a tiny model with these options, and the options."""
    arch, img_size, tiny_options = tiny
    checked = options(tiny_options, *parts, **more)
    return bench.measure_rows(arch, img_size, batch, checked), checked


def by_method(rows):
    return {(r['method'], r['P']): r for r in rows}


def tiny_vit_bytes(embed, depth, patch, img):
    """Parameter bytes of timm's ViT at this size, counted by hand (float32, no buffers):
    patch embedding, CLS token, position embedding, blocks (LN, qkv, proj, LN, MLP 4x),
    final LN."""
    tokens = (img // patch) ** 2 + 1
    block = 2 * embed + 3 * embed * embed + 3 * embed + embed * embed + embed + 2 * embed \
        + 4 * embed * embed + 4 * embed + 4 * embed * embed + embed
    return 4 * (3 * patch * patch * embed + embed + embed + tokens * embed + depth * block
                + 2 * embed)


def test_tiny_vit_rows():
    rows, _ = rows_of(TINY_VIT, FAST, methods=['linear', 'none', 'full', 'vpt', 'cvpt'])
    assert [(r['method'], r['name'], r['P']) for r in rows] == [
        ('linear', 'Linear probing', 0), ('none', 'none (frozen)', 0),
        ('full', 'Full fine-tuning', 0), ('vpt', 'VPT-deep', 4), ('cvpt', 'CVPT, batch dropout', 4)]
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
    rows, checked = rows_of(TINY_SWIN, FAST, methods=['vpt', 'cvpt', 'ivpt', 'full'])
    # the reference first (0 in prompts); Swin has no CLS token: iVPT without AR
    assert [(r['name'], r['P']) for r in rows] == [
        ('none (frozen)', 0), ('VPT-deep', 4), ('CVPT, batch dropout', 4), ('iVPT (no AR)', 4),
        ('Full fine-tuning', 0)]
    row = by_method(rows)
    model = bench.build('swin_tiny_patch4_window7_224', 'full', img_size=32,
                        arch_cfg=checked.arch_cfg)
    assert row['full', 0]['tuned'] == sum(p.numel() for p in model.parameters())
    assert row['none', 0]['tuned'] == 16 * 2 * 100 + 100  # the head on Swin's 32 features
    assert row['vpt', 4]['flops_x_p0'] > 1 and row['full', 0]['flops_x_p0'] > 1
    assert all('cp_memory' not in r for r in rows)


def test_adapter_rows():
    rows, _ = rows_of(TINY_VIT, FAST,
                      methods=['none', 'lora', 'adaptformer', 'adapter', 'ssf', 'bitfit'])
    assert [(r['method'], r['name'], r['P']) for r in rows] == [
        ('none', 'none (frozen)', 0), ('lora', 'LoRA (r=8, q v)', 0),
        ('adaptformer', 'AdaptFormer (64)', 0), ('adapter', 'Adapter (8, attn + mlp)', 0),
        ('ssf', 'SSF', 0), ('bitfit', 'BitFit', 0)]
    row = by_method(rows)
    embed, depth = 32, 2
    assert row['lora', 0]['tuned'] == depth * 2 * 2 * 8 * embed + HEAD  # rank 8 on q and v
    # every bias: norms, qkv, proj, fc1, fc2, patch embedding, final norm
    assert row['bitfit', 0]['tuned'] == \
        depth * (2 * embed + 3 * embed + embed + 4 * embed + embed) + 2 * embed + HEAD
    assert row['adaptformer', 0]['tuned'] == depth * (2 * 64 * embed + 64 + embed) + HEAD
    # a zero-initialised LoRA, bias or bottleneck adds its own small work to the P=0 step
    assert all(row[m, 0]['flops'] >= row['none', 0]['flops']
               for m in ('lora', 'adaptformer', 'bitfit'))
    assert row['adaptformer', 0]['flops'] > row['none', 0]['flops']


def test_rows_only_when_asked():
    rows, _ = rows_of(TINY_VIT, prompts=[4], steps=1, device='cpu', methods=['vpt'])
    # the reference is measured (for x P=0) but not a row; full is not measured at all
    assert [(r['method'], r['P']) for r in rows] == [('vpt', 4)]
    assert rows[0]['flops_x_p0'] > 1
    assert rows[0]['seconds_x_full'] is None and rows[0]['memory_x_full'] is None


NONE, VPT, LORA = ('none', 0), ('vpt', 4), ('lora', 0)


def timed_by_a_fake_clock(monkeypatch, seconds):
    """measure_rows's train steps, recorded: the (method, P) of each step in order. Each
    step of a row takes ``seconds[row]`` on a fake clock, twice that at its 4th step (the
    second timed round with one warm-up: a load that hits every row alike)."""
    order = []
    clock = [0.0]

    def build(arch, method, p=0, *args, **kwargs):
        model = real_build(arch, method, p, *args, **kwargs)
        model.row = (method, p)
        return model

    def train_step(model, *args, **kwargs):
        order.append(model.row)
        clock[0] += seconds[model.row] * (2 if order.count(model.row) == 4 else 1)
        return real_step(model, *args, **kwargs)
    real_build, real_step = bench.timing.build, bench.timing.train_step
    monkeypatch.setattr(bench.timing, 'build', build)  # where measure_rows looks them up
    monkeypatch.setattr(bench.timing, 'train_step', train_step)
    monkeypatch.setattr(bench.timing, 'time', types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(bench.timing, 'machine_load', lambda: 0.5)
    return order


def test_timed_steps_interleave(monkeypatch):
    """Every model is built (one FLOP-counting step each) and warmed up first; then each
    round times one step of every row in turn, and a step ratio is taken within a round: a
    load that doubles one round's steps spreads the times, not the ratios."""
    order = timed_by_a_fake_clock(monkeypatch, {NONE: 1.0, VPT: 1.5, LORA: 0.5})
    rows, _ = rows_of(TINY_VIT, prompts=[0, 4], steps=3, device='cpu',
                      methods=['none', 'vpt', 'lora'])
    assert order == [NONE, VPT, LORA] * 2 + [NONE, VPT, LORA] * 3
    none, vpt, lora = rows
    assert none['seconds_all'] == [1.0, 2.0, 1.0] and vpt['seconds_all'] == [1.5, 3.0, 1.5]
    assert (vpt['seconds_min'], vpt['seconds'], vpt['seconds_max']) == (1.5, 1.5, 3.0)
    assert (vpt['seconds_x_p0_min'], vpt['seconds_x_p0'], vpt['seconds_x_p0_max']) == (1.5,) * 3
    assert (lora['seconds_x_p0_min'], lora['seconds_x_p0_max']) == (0.5, 0.5)
    assert none['seconds_x_p0'] == 1 and none['seconds_x_full'] is None and none['load'] == 0.5
    # the times vary 2x between rounds, the ratios not at all
    warnings = bench.timing_warnings(rows, steps=3, cpus=2)
    assert len(warnings) == 1 and warnings[0].startswith(
        'WARNING: step times vary between rounds by more than 1.25x (max / min: '
        'none (frozen) P=0 2.00, VPT-deep P=4 2.00, LoRA (r=8, q v) 2.00): the step times are '
        'not to be trusted (the ratios, taken within each round, vary less).')


def test_rows_that_do_not_fit_together_are_timed_in_groups(monkeypatch):
    """With room for one row's model beside the reference, each row is timed in a group of
    its own, the reference timed again beside it (its row keeps its first group's times)."""
    order = timed_by_a_fake_clock(monkeypatch, {NONE: 1.0, VPT: 1.5, LORA: 0.5})
    monkeypatch.setattr(bench.timing, 'memory_budget', lambda device: 1)
    rows, _ = rows_of(TINY_VIT, prompts=[0, 4], steps=3, device='cpu',
                      methods=['none', 'vpt', 'lora'])
    # built: none, vpt, lora; then [none, vpt] warmed up and timed, then [none, lora]
    assert order == [NONE, VPT, LORA] + [NONE, VPT] * 4 + [NONE, LORA] * 4
    assert [(r['method'], r['P']) for r in rows] == [NONE, VPT, LORA]
    assert rows[0]['seconds_all'] == [1.0, 2.0, 1.0]
    # LoRA's 4th step (doubled) beside the reference's 8th (not): a load that hits one row
    # and not the reference spreads the ratios
    assert rows[2]['seconds_all'] == [0.5, 1.0, 0.5]
    assert (rows[2]['seconds_x_p0_min'], rows[2]['seconds_x_p0_max']) == (0.5, 1.0)
    assert bench.timing_warnings(rows, steps=3, cpus=2)[0].startswith(
        'WARNING: step ratios vary between rounds by more than 1.25x (max / min: '
        'LoRA (r=8, q v) 2.00): the ratios are not to be trusted')


def test_warnings_when_the_timings_cannot_be_trusted():
    row = dict(method='vpt', name='VPT-deep', P=10, seconds_min=1.0, seconds_max=1.2,
               seconds_x_p0_min=1.1, seconds_x_p0_max=1.3, load=1.5)
    assert bench.timing_warnings([row], steps=5, cpus=2) == []  # spreads 1.2 and 1.18, load 0.75
    assert bench.timing_warnings([row], steps=2, cpus=2) == [
        'WARNING: 2 timed step(s) per row: no spread to judge the step times by; use --steps 5 '
        'or more for numbers to compare.']
    [line] = bench.timing_warnings([dict(row, load=2.5)], steps=5, cpus=2)
    assert line.startswith('WARNING: the 1-minute load average reached 2.50 on 2 CPUs')
    [line] = bench.timing_warnings([dict(row, seconds_x_p0_max=1.5)], steps=5, cpus=2)
    assert 'step ratios vary between rounds by more than 1.25x (max / min: VPT-deep P=10 1.36)' \
        in line
    adapter = dict(row, method='lora', name='LoRA (r=8, q v)', P=0, seconds_max=2.0)
    [line] = bench.timing_warnings([adapter], steps=5, cpus=2)
    assert '(max / min: LoRA (r=8, q v) 2.00)' in line  # no P for a row without prompts


def test_the_table_warns_under_load_and_says_its_progress(monkeypatch, capsys):
    """The script in this process, the machine's load forced above its CPUs: the warning
    under the table; on stderr a line as each model is built and each round timed."""
    from tools.analysis import benchmark as tool
    monkeypatch.setattr(bench.timing, 'machine_load', lambda: 99.0)
    tool.main([*TINY_VIT_ARGS, '--prompts', '4', '--steps', '3', '--device', 'cpu', '--batch',
               '2', '--methods', 'vpt,lora'])
    out, err = capsys.readouterr()
    table, notes = out.strip().split('\n\n')
    assert [cells(line)[:2] for line in table.splitlines()[3:]] == [['VPT-deep', '4'],
                                                                  ['LoRA (r=8, q v)', '-']]
    assert notes.splitlines()[-1].startswith(
        'WARNING: the 1-minute load average reached 99.00 on ')
    progress = [line for line in err.splitlines() if line.startswith('[benchmark] ')]
    # the reference is measured for x P=0 though not printed (0 is not in --prompts)
    assert [line.split(' [')[0] for line in progress[:6]] == [
        '[benchmark] built none (frozen) P=0 (1/3), FLOPs and memory counted',
        '[benchmark] built VPT-deep P=4 (2/3), FLOPs and memory counted',
        '[benchmark] built LoRA (r=8, q v) (3/3), FLOPs and memory counted',
        '[benchmark] timed round 1/3: one step of each of 3 rows',
        '[benchmark] timed round 2/3: one step of each of 3 rows',
        '[benchmark] timed round 3/3: one step of each of 3 rows']
    assert progress[6].startswith('[benchmark] done: VPT-deep P=4, step ')


@pytest.mark.parametrize('tiny', [TINY_VIT, TINY_SWIN], ids=['vit', 'swin'])
def test_with_cp_rows(tiny):
    rows, _ = rows_of(tiny, FAST, methods=['none', 'vpt'], with_cp=True)
    assert [(r['method'], r['P']) for r in rows] == [('none', 0), ('vpt', 4)]
    for row in rows:
        # checkpointing keeps each block's input only
        assert row['cp_memory'] < row['memory']
        assert row['cp_x_no_cp'] == row['cp_memory'] / row['memory'] < 1


def cells(line):
    return [c.strip() for c in line.strip('|').split('|')]


@pytest.mark.tools
def test_printed_table_is_the_rows():
    """The script's table: its title, header and, per row, the cells of the rows
    ``measure_rows`` gives (the timings, which differ from run to run, as numbers)."""
    proc = run_tool('analysis/benchmark.py', *TINY_VIT_ARGS, '--prompts', '0,4', '--steps', '1',
                    '--device', 'cpu', '--batch', '2', '--methods', 'none,full,vpt', '--with-cp')
    table, notes = proc.stdout.strip().split('\n\n')
    title, header, rule, *lines = table.splitlines()
    assert title.startswith('vit_base_patch16_224, 32 px, batch 2, cpu (')
    assert f'threads), fp32, eager, torch {torch.__version__}, arch_cfg' in title
    # every timed figure with its min / median / max; every ratio says what it is of
    assert cells(header) == [
        'method', 'prompts P', 'tuned params', 'train GFLOPs', 'GFLOPs x P=0',
        'step s min', 'step s median', 'step s max',
        'step x P=0 min', 'step x P=0 median', 'step x P=0 max',
        'step x full min', 'step x full median', 'step x full max',
        'saved for backward MiB', 'memory x P=0', 'memory x full', 'with_cp MiB',
        'with_cp x without']
    assert rule.count('|') == len(cells(header)) + 1
    rows, _ = rows_of(TINY_VIT, FAST, methods=['none', 'full', 'vpt'], with_cp=True)
    short = lambda x: f'{x:.0f}' if abs(x) >= 1000 else f'{x:.4g}'  # noqa: E731
    printed = [cells(line) for line in lines]
    assert [[c[i] for i in (0, 2, 3, 4, 14, 15, 16, 17, 18)] for c in printed] == [[
        r['name'], f'{r["tuned"]:,}', short(r['flops'] / 1e9),
        f'{r["flops_x_p0"]:.3f}', short(r['memory'] / 2**20), f'{r["memory_x_p0"]:.2f}',
        f'{r["memory_x_full"]:.2f}', short(r['cp_memory'] / 2**20), f'{r["cp_x_no_cp"]:.2f}']
        for r in rows]
    for c in printed:  # step s, x P=0, x full: min <= median <= max
        for low, mid, high in (c[5:8], c[8:11], c[11:14]):
            assert 0 < float(low) <= float(mid) <= float(high)
    assert [c[1] for c in printed] == ['0', '-', '4']  # full fine-tuning has no prompts
    assert printed[0][8:11] == ['1.00'] * 3  # the reference over itself, in every round
    assert printed[1][11:14] == ['1.00'] * 3 and printed[1][16] == '1.00'  # full over full
    # the legend says what x P=0 and saved for backward are; one step: no spread to judge
    legend, *warnings = notes.splitlines()
    assert legend.startswith('x P=0: over the P=0 reference row')
    assert '1 timed train steps per row after 1 warm-up, the rows\' steps interleaved' in legend
    assert 'saved for backward MiB: the bytes autograd holds for backward' in legend
    assert warnings[0].startswith('WARNING: 1 timed step(s) per row: no spread')
    # progress on stderr: each model built, each round timed
    assert '[benchmark] built none (frozen) P=0 (1/3)' in proc.stderr
    assert '[benchmark] built VPT-deep P=4 (3/3)' in proc.stderr
    assert '[benchmark] timed round 1/1: one step of each of 3 rows' in proc.stderr


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
    monkeypatch.setattr(bench.timing, 'build', build)  # where measure_rows looks it up
    fp32, _ = rows_of(TINY_VIT, FAST, methods=['none'])
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16, checked = rows_of(TINY_VIT, FAST, methods=['none'], amp='bf16')
    assert checked.amp_dtype is torch.bfloat16
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
    eager, _ = rows_of(TINY_VIT, FAST, methods=['none', 'vpt'])
    rows, checked = rows_of(TINY_VIT, FAST, methods=['none', 'vpt'], compile=True,
                            compile_backend='counting_aot_eager')
    assert checked.warmup == 2
    assert COMPILED_GRAPHS  # dynamo captured the model
    assert [(r['method'], r['P']) for r in rows] == [('none', 0), ('vpt', 4)]
    for row, eager_row in zip(rows, eager):
        assert math.isfinite(row['seconds']) and row['seconds'] > 0 and row['first_seconds'] > 0
        # counted on the eager model: compiled kernels are no aten ops to count
        assert row['flops'] == eager_row['flops']
    assert bench.describe_setting(checked).split(', ')[2] == 'torch.compile (counting_aot_eager)'


@functools.lru_cache(maxsize=None)
def PROFILES():  # noqa: N802  (measured once, for two tests)
    checked = options(TINY_VIT[2], steps=1, device='cpu')
    arch, img = TINY_VIT[:2]
    return (bench.profile_step(arch, img, 2, 'none', 0, checked),
            bench.profile_step(arch, img, 2, 'vpt', 4, checked))


CPU_ATTENTION = 'aten::_scaled_dot_product_flash_attention_for_cpu'


def test_profile_step():
    none, vpt = PROFILES()
    assert 0 < none['num_outer_ops'] < none['num_ops']
    assert vpt['num_ops'] >= none['num_ops'] and vpt['num_outer_ops'] >= none['num_outer_ops']
    assert none['num_kernels'] == vpt['num_kernels'] == 0  # no CUDA here
    # the kernel each attention got: one forward and one backward per block (2), on CPU
    assert none['attention'] == vpt['attention'] == {CPU_ATTENTION: 2,
                                                     CPU_ATTENTION + '_backward': 2}
    assert vpt['sort'] == 'self_cpu_us' and 0 < len(vpt['top']) <= 15
    self_cpu = [cpu for _, _, cpu, _ in vpt['top']]
    assert self_cpu == sorted(self_cpu, reverse=True) and self_cpu[0] > 0
    assert any(name.startswith('aten::') for name, *_ in vpt['top'])


@pytest.mark.tools
def test_cli_prints_the_profile_after_the_table():
    proc = run_tool('analysis/benchmark.py', *TINY_VIT_ARGS, '--prompts', '0', '--steps', '1',
                    '--device', 'cpu', '--batch', '2', '--methods', 'linear', '--profile',
                    'linear:0', '--profile', 'cvpt:4', '--profile', 'vpt:4')
    out = proc.stdout
    # the reference first: 0 is in --prompts
    assert out.index('| none (frozen) | 0 | 3,300 |') \
        < out.index('| Linear probing | - | 3,300 |') \
        < out.index('profile of one train step: Linear probing P=0') \
        < out.index('profile of one train step: CVPT, batch dropout P=4') \
        < out.index('profile of one train step: VPT-deep P=4, vit_base_patch16_224, 32 px, batch 2')
    # the last profile as printed: profile_step's counts, attention kernels and top events
    _, vpt = PROFILES()
    vpt_part = out[out.index('profile of one train step: VPT-deep'):].splitlines()
    assert vpt_part[1] == (f'{vpt["num_ops"]:,} aten op calls ({vpt["num_outer_ops"]:,} '
                           f'outermost); top {len(vpt["top"])} by self CPU time:')
    assert vpt_part[2] == f'attention kernels: {CPU_ATTENTION} x2, {CPU_ATTENTION}_backward x2'
    assert vpt_part[3] == '| event | calls | self CPU ms | self CUDA ms |'
    events = [cells(line) for line in vpt_part[5:] if line.startswith('| ')]
    assert 0 < len(events) == len(vpt['top']) and len({e[0] for e in events}) == len(events)
    self_cpu = [float(e[2]) for e in events]
    assert self_cpu == sorted(self_cpu, reverse=True)
    assert any(re.match(r'aten::\w+$', e[0]) for e in events)


@pytest.mark.parametrize('given, message', [
    (dict(methods=['vpt', 'deep']), '--methods deep: choose from'),
    (dict(arch_cfg=[1, 2]), '--arch-cfg: a JSON object'),
    (dict(prompts=[0, -1]), '--prompts: counts must be >= 0'),
    (dict(amp='fp8'), '--amp fp8: choose from bf16,fp16'),
    (dict(compile_backend='eager'), '--compile-backend: needs --compile'),
    (dict(compile=True, compile_backend='no_such_backend'),
     '--compile-backend no_such_backend: choose'),
    (dict(warmup=0), '--warmup: at least 1'),
])
def test_bad_options_are_refused(given, message):
    with pytest.raises(bench.OptionError, match=message):
        options(given)


@pytest.mark.parametrize('spec, message', [
    ('foo:1', "foo:1: unknown method 'foo'"),
    ('vpt', 'vpt: give METHOD:P, e.g. vpt:10'),
    ('vpt:x', 'vpt:x: give METHOD:P'),
    ('full:4', 'full:4: full has no prompts; use full:0'),
    ('cvpt:0', 'cvpt:0: a prompt method needs P > 0'),
])
def test_bad_profile_specs_are_refused(spec, message):
    with pytest.raises(bench.OptionError, match=message):
        bench.parse_profile_spec(spec)
    assert bench.parse_profile_spec('cvpt:10') == ('cvpt', 10)


@pytest.mark.tools
def test_the_command_line_refuses_bad_options_in_one_line():
    for args, message in ((['--methods', 'vpt,deep'], '--methods deep: choose from'),
                          (['--amp', 'fp8'], "argument --amp: invalid choice: 'fp8'"),
                          (['--profile', 'foo:1'],
                           "argument --profile: foo:1: unknown method 'foo'")):
        proc = run_tool('analysis/benchmark.py', *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr


def test_amp_without_autocast_support_is_refused(monkeypatch):
    """A torch without float16 autocast on CPU says so rather than timing float32."""
    monkeypatch.setattr(bench.options, 'autocast_supported', lambda device, amp: False)
    with pytest.raises(bench.OptionError, match='--amp fp16: torch '):
        options(amp='fp16', device='cpu')


# -- --multitask: serving rows ---------------------------------------------------------------
@pytest.mark.parametrize('timing', [{}, dict(cpu_time=True)], ids=['wall', 'cpu_time'])
def test_multitask_rows(timing):
    """One backbone for N tasks holds the backbone once and N tasks' prompts and heads; N
    separate models hold N of everything."""
    arch, img, tiny = TINY_VIT
    checked = options(tiny, methods=['cvpt', 'vpt', 'lora'], prompts=[4], steps=1, device='cpu',
                      multitask=[1, 3], **timing)
    assert checked.threads == (1 if timing else None)
    backbone = tiny_vit_bytes(embed=32, depth=2, patch=8, img=32)
    lora = 2 * 2 * 2 * 8 * 32  # rank 8 on q and v: A and B in each of the 2 blocks
    for method, p, tuned in (('cvpt', 4, PROMPTS), ('vpt', 4, PROMPTS), ('lora', 0, lora)):
        task = 4 * (tuned + HEAD)
        rows = bench.measure_serving(arch, img, 4, method, p, checked)
        assert [(r['setup'], r['tasks'], r['backbones']) for r in rows] == [
            ('one model, single-task batch', 1, 1),
            ('MultiTaskModel, mixed batch', 1, 1), ('separate models, one per task', 1, 1),
            ('MultiTaskModel, mixed batch', 3, 1), ('separate models, one per task', 3, 3)]
        expected = [backbone + task, backbone + task, backbone + task,
                    backbone + 3 * task, 3 * (backbone + task)]
        assert [r['weights'] for r in rows] == expected
        assert [r['weights_x_one'] for r in rows] == [e / expected[0] for e in expected]
        assert rows[0]['rate_x_single'] == 1
        assert all(r['rate'] > 0 and r['peak'] is None and r['peak_x_one'] is None for r in rows)
        assert [r['rate_x_single'] for r in rows] == [r['rate'] / rows[0]['rate'] for r in rows]


@pytest.mark.tools
def test_multitask_table():
    """The script's --multitask tables: a title per method and P, a row per serving setup."""
    proc = run_tool('analysis/benchmark.py', *TINY_VIT_ARGS, '--multitask', '1,2', '--methods',
                    'cvpt,vpt', '--prompts', '4', '--batch', '4', '--steps', '1', '--device', 'cpu',
                    '--cpu-time')
    titles = [line for line in proc.stdout.splitlines() if line and not line.startswith('|')]
    assert [title.split(', ')[:4] for title in titles] == [
        ['vit_base_patch16_224', '32 px', 'batch 4', 'CVPT'],
        ['vit_base_patch16_224', '32 px', 'batch 4', 'VPT-deep P=4']]
    assert 'batch dropout P=4' in titles[0] and 'eval, no grad, CPU time' in titles[0]
    tables = proc.stdout.split('\n\n')[1:]
    backbone = tiny_vit_bytes(embed=32, depth=2, patch=8, img=32)
    task = 4 * (PROMPTS + HEAD)
    expected = [backbone + task, backbone + task, backbone + task, backbone + 2 * task,
                2 * (backbone + task)]
    for table in tables:
        header, _, *lines = table.strip().splitlines()[1:]
        assert cells(header) == ['setup', 'tasks', 'backbones', 'weights MiB', 'weights bytes',
                                 'x one model', 'images/CPU-s', 'x single-task batch']
        rows = [cells(line) for line in lines]
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ('one model, single-task batch', '1', '1'),
            ('MultiTaskModel, mixed batch', '1', '1'), ('separate models, one per task', '1', '1'),
            ('MultiTaskModel, mixed batch', '2', '1'), ('separate models, one per task', '2', '2')]
        assert [int(r[4].replace(',', '')) for r in rows] == expected
        assert [float(r[5]) for r in rows] == [round(e / expected[0], 3) for e in expected]
        assert rows[0][7] == '1.00' and all(float(r[6]) > 0 for r in rows)


@pytest.mark.parametrize('given, message', [
    (dict(multitask=[0, 4]), '--multitask: task counts must be >= 1'),
    (dict(multitask=[4], methods=['none', 'linear', 'full']), '--multitask: needs a tuning method'),
    (dict(multitask=[4], prompts=[0], methods=['cvpt', 'vpt']),
     'for a prompt method, a prompt count P > 0'),
    (dict(multitask=[4], amp='bf16', device='cpu'), '--amp, --compile and --profile do not apply'),
    (dict(multitask=[4], profile=[('vpt', 4)]), '--amp, --compile and --profile do not apply'),
    (dict(cpu_time=True), '--cpu-time: for --multitask on --device cpu'),
    (dict(multitask=[4], cpu_time=True, threads=2, device='cpu'), '--cpu-time: counts one thread'),
])
def test_bad_multitask_options_are_refused(given, message):
    with pytest.raises(bench.OptionError, match=message):
        options(given)


def test_the_gpu_benchmark_script_asks_for_rows_the_benchmark_has():
    """tools/analysis/gpu_benchmark.sh runs on a short GPU lease, where a typo'd row would
    cost the lease: every --methods and --profile it passes is accepted here, and its
    eager ViT-B table measures every row (no --methods: the default, every method's rows)."""
    import os.path as osp
    script = open(osp.join(ROOT, 'tools', 'analysis', 'gpu_benchmark.sh')).read()
    method_lists = [m.split(',') for m in re.findall(r'--methods (\S+)', script)]
    assert len(method_lists) == 2
    for methods in method_lists:
        options(FAST, methods=methods)
    for spec in re.findall(r'--profile (\S+)', script):
        bench.parse_profile_spec(spec)
    vit_b = script[script.index('--batch 64 --prompts 0,10,50,200'):].split('\n')[:3]
    assert not any('--methods' in line for line in vit_b), vit_b
