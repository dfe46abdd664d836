"""Cost of each prompt method on a timm ViT or Swin, next to linear probing and full
fine-tuning, and where the time of a train step goes.

Tuned parameters, train FLOPs, train-step time and memory of each method and prompt count:

    python tools/analysis/benchmark.py [--arch vit_base_patch16_224 swin_base_patch4_window7_224]
        [--img-size 224] [--batch 8] [--prompts 0,10,50,100,200]
        [--methods none,linear,full,vpt,vpt_batch,e2vpt,cvpt,cvpt_sample,ivpt,
                   lora,adaptformer,adapter,ssf,bitfit]
        [--amp bf16|fp16] [--compile [--compile-backend inductor]] [--with-cp]
        [--device cpu|cuda] [--steps N] [--warmup N] [--threads N] [--arch-cfg JSON]
        [--profile METHOD:P [--profile METHOD:P ...]]

One markdown table per (arch, image size, batch); its title names the device (CPU threads
or GPU), the precision, eager or torch.compile and the torch version. Swin names
(``swin_*``) run on PromptedSwin, every other name on PromptedViT; ``--arch-cfg`` is the
backbone's ``arch_cfg`` (e.g. '{"embed_dim": 32, "depth": 2, "num_heads": 2}' for a tiny
ViT). Swin has no CLS token, so iVPT runs there without attention-guided reinforcement (AR).

The model is the backbone and a 100-class linear head (``Classifier``). Rows:

- ``none``, the P=0 reference every "x P=0" column refers to: the frozen backbone without
  prompts whose train step still back-propagates through every block (to the
  patch-embedding output), i.e. the cost structure of prompt tuning without prompts. It is
  always measured; its row is printed when ``none`` is in ``--methods`` or 0 in ``--prompts``.
- ``linear``: linear probing, the backbone's forward under ``torch.no_grad()``, only the
  head trains (no backward through the backbone).
- ``full``: full fine-tuning, the backbone built with ``frozen=False``: every parameter
  trains. The "x full" ratios (step time and memory over full fine-tuning's) are there when
  ``full`` is in ``--methods`` (the default); full fine-tuning is not measured otherwise, as
  it needs gradients and AdamW moments of every weight.
- the prompt methods, one row per P > 0;
- the adapter-style baselines (LoRA, AdaptFormer, Adapter, SSF, BitFit), one row each.

Columns ("x P=0": over the reference row's figure; "x full": over full fine-tuning's):
``prompts P`` is the prompt count ("-" for rows without prompts); ``tuned params`` the
parameters the optimizer steps, the head's (100·C + 100) included. ``train GFLOPs`` are
counted with torch's FlopCounterMode over one forward + backward, on the eager model (also
with ``--compile``: compiled kernels are not aten ops it could count). A timed train step is
what MMEngine's runner does per iteration: forward and loss, backward, and the AdamW step on
the tuned parameters, then zero_grad. Every row's model is built and warmed up first
(``--warmup`` steps, default 3 on GPU, 1 on CPU; at least 2 with ``--compile``), then the
rows' timed steps are interleaved: each of ``--steps`` rounds (default 10 on GPU, 3 on CPU)
runs one step of every row in turn, so that a change of the machine's load hits every row
alike. ``step s min / median / max`` are over the rounds; a step ratio (``step x P=0``,
``step x full``) is taken within each round (the row's step over the reference's of the same
round), then min / median / max over the rounds. Steps are timed by CUDA events on GPU and by
``time.perf_counter`` on CPU. Where the models do not fit in memory together (half of the free
GPU memory, or of MemAvailable on CPU), the rows are timed in groups, the references again
beside each. Memory: on GPU (``step peak GPU MiB``) the peak allocated during a timed step
less what was allocated before it (weights, gradients kept, AdamW moments), i.e. what the
step itself needs; on CPU (``saved for backward MiB``) the bytes autograd holds for backward
(saved activations, each storage once, parameters left out, so under ``--amp`` the
low-precision copies of the weights that are saved count), computed under the same autocast
as the step. ``--with-cp`` adds that memory with gradient checkpointing (``with_cp MiB``,
``with_cp=True``; on CPU the saved bytes are then each block's input plus what lies outside
the blocks, not the one block recomputed at a time in backward) and its ratio to without.

The table is printed when its rows are measured, a legend under it; progress (each model
built, each round timed) goes to stderr as it happens. A ``WARNING:`` line under the table
says when the times are not to be trusted: a row's step times or step ratios varying between
rounds by more than 1.25x (max / min), the 1-minute load average above the number of CPUs
while timing (other jobs took turns with the steps; this run's own threads count too), or
fewer than 3 timed steps.

``--amp bf16|fp16`` runs the step as MMEngine's ``AmpOptimWrapper`` does: the forward and
the loss under ``torch.autocast(device, dtype, cache_enabled=False)``, backward and step
outside it, on GPU with a GradScaler (``scale(loss).backward()``, ``scaler.step``,
``scaler.update``) for either dtype as the wrapper has; on CPU (where the wrapper does not
run) bf16 needs no scaler and fp16, where torch's CPU autocast supports it, gets one.
``--compile`` wraps the whole Classifier in ``torch.compile(backend=--compile-backend)``
(default inductor; aot_eager or eager check the graph capture without code generation); the
compilation happens in the warm-up, whose first step's seconds the "first step s" column
shows, and is never in the step time. Dynamo's cache is reset before each row's model.

``--profile METHOD:P`` (repeatable; P=0 for none, linear and full) runs torch.profiler over
one train step of that row after the warm-up and prints the aten op calls per step (all,
and the outermost ones: not inside another aten op, i.e. what Python and autograd dispatch),
the CUDA kernels per step on GPU (device events: kernels, memcpy, memset), the kernel each
attention call got (flash, memory-efficient, cuDNN or math on GPU), and the top 15 events
by self time (self CUDA time on GPU, self CPU time on CPU) with calls, self CPU and
self CUDA milliseconds.

Serving several tasks on one backbone (``--multitask N [N ...]``, eval mode, no grad): per
method and P, the images/s and memory of (a) one ``mmvpt.apis.MultiTaskModel`` serving N
tasks in batches that mix them (a random task per sample), (b) N separate models run one
after another, each on its tasks' share of the batch, and (c) one model on a batch of one
task, the reference:

    python tools/analysis/benchmark.py --multitask 1 4 16 --methods cvpt --prompts 10
        --batch 32 [--steps 3] [--threads 2 | --cpu-time] [--device cpu|cuda]

The tasks are random tuned tensors (prompts, and a 100-class LinearClsHead each) written as
tuned-only checkpoints to a temporary folder and loaded by MultiTaskModel; the backbone's
weights are random too (the cost does not depend on them). Memory: the bytes of the
parameters and buffers held (and the peak CUDA memory of each run on GPU), with ratios to
the one model of (c); throughput (of the fastest of ``--steps`` timed forwards, after one
warm-up) with its ratio to (c); ``--cpu-time`` times by the CPU seconds of one torch
thread instead, for shared CPUs where other jobs make wall-clock times vary. ``none`` and
P = 0 have no per-task prompts and are skipped; ``--amp``, ``--compile`` and ``--profile``
do not apply there.

The measuring is done in :mod:`mmvpt.analysis.benchmark` (``measure_rows``, ``profile_step`` and
``measure_serving`` return the numbers as data); this script parses the command line and
prints the tables.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

import torch  # noqa: E402

from mmvpt.analysis.benchmark import (  # noqa: E402
    ADAPTER_ROWS,
    AMP_DTYPES,
    BASELINES,
    FULL,
    METHODS,
    REFERENCE,
    VARIANTS,
    BenchmarkOptions,
    OptionError,
    check_options,
    default_img_size,
    describe_setting,
    measure_rows,
    measure_serving,
    method_name,
    parse_profile_spec,
    profile_step,
    timing_warnings,
)


def _short(x):
    """4 significant digits (whole numbers from 1000 on): ViT-B's GFLOPs and a tiny test
    model's both stay readable."""
    return f'{x:.0f}' if abs(x) >= 1000 else f'{x:.4g}'


def title(arch, img_size, batch, options, setting):
    return (f'\n{arch}, {img_size} px, batch {batch}, {setting}'
            + (f', arch_cfg {json.dumps(options.arch_cfg)}' if options.arch_cfg else ''))


def _prompts(row):
    """The prompt count, shown for the P=0 reference and the prompt methods only (linear
    probing, full fine-tuning and the adapter-style rows have none)."""
    return str(row['P']) if row['method'] == REFERENCE or row['method'] in VARIANTS else '-'


def _spread_columns(label, key, format):
    """The min, median and max columns of a timed figure (``key`` the median's)."""
    return [(f'{label} {which}', lambda r, k=f'{key}{suffix}': format(r[k]))
            for which, suffix in (('min', '_min'), ('median', ''), ('max', '_max'))]


def table_columns(options):
    """(header, format) of each column of the training table; ``format(row)`` gives a cell."""
    mib = lambda key: lambda r: _short(r[key] / 2**20)  # noqa: E731
    ratio = lambda key, digits=2: lambda r: f'{r[key]:.{digits}f}'  # noqa: E731
    seconds = lambda value: f'{value:.4g}'  # noqa: E731
    times = lambda value: f'{value:.2f}'  # noqa: E731
    columns = [('method', lambda r: r['name']), ('prompts P', _prompts),
               ('tuned params', lambda r: f'{r["tuned"]:,}'),
               ('train GFLOPs', lambda r: _short(r['flops'] / 1e9)),
               ('GFLOPs x P=0', ratio('flops_x_p0', 3))]
    columns += _spread_columns('step s', 'seconds', seconds)
    columns += _spread_columns('step x P=0', 'seconds_x_p0', times)
    full = FULL in options.methods
    if full:
        columns += _spread_columns('step x full', 'seconds_x_full', times)
    columns += [('step peak GPU MiB' if options.device == 'cuda' else 'saved for backward MiB',
                 mib('memory')), ('memory x P=0', ratio('memory_x_p0'))]
    if full:
        columns.append(('memory x full', ratio('memory_x_full')))
    if options.with_cp:
        columns += [('with_cp MiB', mib('cp_memory')), ('with_cp x without', ratio('cp_x_no_cp'))]
    if options.compile:
        columns.append(('first step s (compiles)', lambda r: f'{r["first_seconds"]:.2f}'))
    return columns


def legend(options):
    """What the columns mean, printed under the table."""
    memory = ('step peak GPU MiB: the peak allocated during a timed step over what was '
              'allocated before it' if options.device == 'cuda' else
              'saved for backward MiB: the bytes autograd holds for backward (activations, '
              'frozen weights left out)')
    return (f'x P=0: over the P=0 reference row (the frozen backbone without prompts, '
            f'back-propagating through every block); x full: over full fine-tuning. Step times: '
            f'{options.steps} timed train steps per row after {options.warmup} warm-up, the '
            f'rows\' steps interleaved (each round one step of every row); a step ratio is '
            f'taken within each round (the row\'s step over the reference\'s of the same '
            f'round); min / median / max over the rounds. {memory}.')


def print_table(arch, img_size, batch, options):
    """The table of one (arch, image size, batch), printed when its rows are measured (each
    model built and each timed round said on stderr as it goes); under it the legend, and a
    warning where the times are not to be trusted."""
    columns = table_columns(options)
    print(title(arch, img_size, batch, options, describe_setting(options)), flush=True)
    progress = lambda message: print(f'[benchmark] {message}', file=sys.stderr, flush=True)  # noqa: E731
    rows = measure_rows(arch, img_size, batch, options, on_progress=progress)
    print('| ' + ' | '.join(name for name, _ in columns) + ' |')
    print('|---|' + '---:|' * (len(columns) - 1))
    for row in rows:
        print('| ' + ' | '.join(cell(row) for _, cell in columns) + ' |')
    print('\n' + legend(options))
    for line in timing_warnings(rows, options.steps):
        print(line)
    sys.stdout.flush()
    return rows


SORT_NAMES = dict(self_cpu_us='self CPU', self_cuda_us='self CUDA')


def print_profile(arch, img_size, batch, profile, options):
    name = method_name(arch, profile['method'])
    print(f'\nprofile of one train step: {name} P={profile["P"]}, {arch}, {img_size} px, '
          f'batch {batch}, {describe_setting(options)}')
    kernels = f', {profile["num_kernels"]:,} CUDA kernels' if options.device == 'cuda' else ''
    print(f'{profile["num_ops"]:,} aten op calls ({profile["num_outer_ops"]:,} outermost)'
          f'{kernels}; top {len(profile["top"])} by {SORT_NAMES[profile["sort"]]} time:')
    if profile['attention']:
        print('attention kernels: ' + ', '.join(f'{name} x{count}'
                                                for name, count in profile['attention'].items()))
    print('| event | calls | self CPU ms | self CUDA ms |')
    print('|---|---:|---:|---:|')
    for event, calls, cpu_us, cuda_us in profile['top']:
        print(f'| {event} | {calls} | {cpu_us / 1e3:.3f} | {cuda_us / 1e3:.3f} |')
    sys.stdout.flush()


def print_serving(arch, img_size, batch, method, p, options):
    """The table of serving ``method`` at P=``p`` for every --multitask N."""
    cuda = options.device == 'cuda'
    where = torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'
    print(title(arch, img_size, batch, options,
                f'{method_name(arch, method)} P={p}, {options.device} ({where}), eval, no grad'
                + (', CPU time' if options.cpu_time else '')))
    header = '| setup | tasks | backbones | weights MiB | weights bytes | x one model |'
    rule = '|---|---:|---:|---:|---:|---:|'
    if cuda:
        header += ' peak GPU MiB | x one model |'
        rule += '---:|---:|'
    rate_name = 'images/CPU-s' if options.cpu_time else 'images/s'
    print(header + f' {rate_name} | x single-task batch |')
    print(rule + '---:|---:|', flush=True)

    def print_row(row):
        line = (f'| {row["setup"]} | {row["tasks"]} | {row["backbones"]} | '
                f'{_short(row["weights"] / 2**20)} | {row["weights"]:,} | '
                f'{row["weights_x_one"]:.3f} |')
        if cuda:
            line += f' {_short(row["peak"] / 2**20)} | {row["peak_x_one"]:.2f} |'
        print(line + f' {row["rate"]:.2f} | {row["rate_x_single"]:.2f} |', flush=True)
    return measure_serving(arch, img_size, batch, method, p, options, on_row=print_row)


def _listed(kind):
    """argparse type: comma-separated values (``0,10,50``); spaces work too (nargs='+')."""
    return lambda text: [kind(v) for v in text.split(',') if v]


def _flat(lists):
    return [v for values in lists for v in values]


def _profile_spec(text):
    try:
        return parse_profile_spec(text)
    except OptionError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv=None):
    """(options for mmvpt.analysis.benchmark, archs, image sizes or None, batches)."""
    parser = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    parser.add_argument('--arch', nargs='+', type=_listed(str), default=[['vit_base_patch16_224']],
                        help='timm ViT or Swin names (Swin: swin_*)')
    parser.add_argument('--img-size', nargs='+', type=_listed(int), default=None,
                        help="input sizes (default: each arch's pretrained size)")
    parser.add_argument('--batch', nargs='+', type=_listed(int), default=[[8]])
    parser.add_argument('--prompts', nargs='+', type=_listed(int), default=[[0, 10, 50, 100, 200]],
                        help='prompt counts P; 0 prints the reference row')
    parser.add_argument('--methods', nargs='+', type=_listed(str), default=[METHODS],
                        help=f'any of {",".join(METHODS)} (none: the P=0 reference row; linear: '
                        'linear probing; full: full fine-tuning, the "x full" reference)')
    parser.add_argument('--amp', choices=list(AMP_DTYPES), default=None,
                        help='mixed precision as MMEngine\'s AmpOptimWrapper (default: fp32)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the model before timing (compilation not timed)')
    parser.add_argument('--compile-backend', default=None,
                        help='torch.compile backend with --compile (default inductor)')
    parser.add_argument('--profile', action='append', type=_profile_spec, default=[],
                        metavar='METHOD:P', help='profile one train step of this row (repeatable)')
    parser.add_argument('--with-cp', action='store_true',
                        help='add the memory with gradient checkpointing (backbone with_cp=True)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--steps', type=int, default=None,
                        help='timed train steps per row, the median counts (default 10 on '
                        'cuda, 3 on cpu); --multitask: timed forwards (default 3)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed train steps before them (default 3 on cuda, 1 on cpu; '
                        'at least 2 with --compile)')
    parser.add_argument('--multitask', nargs='+', type=_listed(int), default=None, metavar='N',
                        help='serving N tasks on one backbone (eval): MultiTaskModel vs N '
                        'separate models vs a single-task batch, per method and P > 0')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s own choice)')
    parser.add_argument('--cpu-time', action='store_true',
                        help='--multitask on CPU: time by the CPU seconds of one torch thread '
                        '(images/CPU-s), which other jobs on shared cores do not inflate')
    parser.add_argument('--arch-cfg', type=json.loads, default=None,
                        help="JSON keyword arguments for the backbone's arch_cfg")
    args = parser.parse_args(argv)
    try:
        options = check_options(BenchmarkOptions(
            methods=_flat(args.methods), prompts=_flat(args.prompts), device=args.device,
            amp=args.amp, compile=args.compile, compile_backend=args.compile_backend,
            with_cp=args.with_cp, steps=args.steps, warmup=args.warmup, arch_cfg=args.arch_cfg,
            profile=args.profile, multitask=_flat(args.multitask) if args.multitask else None,
            threads=args.threads, cpu_time=args.cpu_time))
    except OptionError as err:
        parser.error(str(err))
    return (options, _flat(args.arch), _flat(args.img_size) if args.img_size else None,
            _flat(args.batch))


def main(argv=None):
    options, archs, img_sizes, batches = parse_args(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    for arch in archs:
        for img_size in img_sizes or [default_img_size(arch)]:
            for batch in batches:
                if options.multitask is None:
                    print_table(arch, img_size, batch, options)
                    for method, p in options.profile:
                        profile = profile_step(arch, img_size, batch, method, p, options)
                        print_profile(arch, img_size, batch, profile, options)
                    continue
                for method in options.methods:
                    if method in BASELINES:
                        continue
                    counts = ([0] if method in ADAPTER_ROWS
                              else [p for p in options.prompts if p > 0])
                    for p in counts:
                        print_serving(arch, img_size, batch, method, p, options)


if __name__ == '__main__':
    main()
