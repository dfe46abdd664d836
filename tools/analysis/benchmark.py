"""Cost of each prompt method on a timm ViT or Swin, next to linear probing and full
fine-tuning, and where the time of a train step goes.

Tuned parameters, train FLOPs, train-step time and memory of each method and prompt count:

    python tools/analysis/benchmark.py [--arch vit_base_patch16_224 swin_base_patch4_window7_224]
        [--img-size 224] [--batch 8] [--prompts 0,10,50,100,200]
        [--methods none,linear,full,vpt,vpt_batch,e2vpt,cvpt,cvpt_sample,ivpt]
        [--amp bf16|fp16] [--compile [--compile-backend inductor]] [--with-cp]
        [--device cpu|cuda] [--steps N] [--warmup N] [--threads N] [--arch-cfg JSON]
        [--profile METHOD:P [--profile METHOD:P ...]]

One markdown table per (arch, image size, batch); its title names the device (CPU threads
or GPU), the precision, eager or torch.compile and the torch version. Swin names
(``swin_*``) run on PromptedSwin, every other name on PromptedViT; ``--arch-cfg`` is the
backbone's ``arch_cfg`` (e.g. '{"embed_dim": 32, "depth": 2, "num_heads": 2}' for a tiny
ViT). Swin has no CLS token, so iVPT runs there without attention-guided reinforcement (AR).

The model is the backbone and a 100-class linear head (``Classifier``). Rows:

- ``none``, the P=0 reference every "x P=0" ratio refers to: the frozen backbone without
  prompts whose train step still back-propagates through every block (to the
  patch-embedding output), i.e. the cost structure of prompt tuning without prompts. It is
  always measured; its row is printed when ``none`` is in ``--methods`` or 0 in ``--prompts``.
- ``linear``: linear probing, the backbone's forward under ``torch.no_grad()``, only the
  head trains (no backward through the backbone).
- ``full``: full fine-tuning, the backbone built with ``frozen=False``: every parameter
  trains. The "x full" ratios (step time and memory over full fine-tuning's) are there when
  ``full`` is in ``--methods`` (the default); full fine-tuning is not measured otherwise, as
  it needs gradients and AdamW moments of every weight.
- the prompt methods, one row per P > 0.

Columns: tuned params are the parameters the optimizer steps, the head's (100·C + 100)
included. FLOPs are counted with torch's FlopCounterMode over one forward + backward, on
the eager model (also with ``--compile``: compiled kernels are not aten ops it could count).
A timed train step is what MMEngine's runner does per iteration: forward and loss, backward,
and the AdamW step on the tuned parameters, then zero_grad. The step time is the median
over ``--steps`` steps (default 10 on GPU, 3 on CPU) after ``--warmup`` steps (default 3 on
GPU, 1 on CPU; at least 2 with ``--compile``), timed by CUDA events around each step on
GPU and by ``time.perf_counter`` on CPU. Memory: on GPU the peak allocated during the timed
steps less what was allocated before them (weights, gradients kept, AdamW moments), i.e.
what the step itself needs; on CPU the bytes autograd holds for backward (saved
activations, each storage once, parameters left out, so under ``--amp`` the low-precision
copies of the weights that are saved count), computed under the same autocast as the step.
``--with-cp`` adds that memory with gradient checkpointing (``with_cp=True``; on CPU the
saved bytes are then each block's input plus what lies outside the blocks, not the one
block recomputed at a time in backward) and its ratio to without.

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
self CUDA milliseconds. ``profile_step`` returns the same as data.

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
"""
import argparse
import collections
import copy
import inspect
import json
import os.path as osp
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmvpt.models import PromptedSwin, PromptedViT  # noqa: E402
from mmvpt.utils import parameter_report  # noqa: E402

VARIANTS = {
    'vpt': ('VPT-deep', lambda p: dict(type='mmvpt.VPT', num_tokens=p)),
    'vpt_batch': ('VPT-deep, batch dropout', lambda p: dict(type='mmvpt.VPT', num_tokens=p,
                                                            dropout_mode='batch')),
    'e2vpt': ('E2VPT (KV 10)', lambda p: dict(type='mmvpt.E2VPT', num_tokens=p, num_kv_tokens=10)),
    'cvpt': ('CVPT, batch dropout', lambda p: dict(type='mmvpt.CVPT', num_tokens=p, dropout_mode='batch')),
    'cvpt_sample': ('CVPT, sample dropout', lambda p: dict(type='mmvpt.CVPT', num_tokens=p,
                                                           dropout_mode='sample')),
    'ivpt': ('iVPT (k=10)', lambda p: dict(type='mmvpt.IVPT', num_tokens=p, num_ar_tokens=10)),
}
# AR reinforces the image tokens the CLS token attends to most; Swin has no CLS token.
SWIN_VARIANTS = dict(VARIANTS, ivpt=('iVPT (no AR)', lambda p: dict(type='mmvpt.IVPT', num_tokens=p,
                                                                    num_ar_tokens=0)))
REFERENCE = 'none'  # the frozen backbone without prompts: the P=0 row every "x P=0" refers to
LINEAR = 'linear'  # linear probing: no backward through the backbone
FULL = 'full'  # full fine-tuning: every weight trains; the row every "x full" refers to
BASELINES = {REFERENCE: 'none (frozen)', LINEAR: 'linear probing', FULL: 'full fine-tuning'}
METHODS = list(BASELINES) + list(VARIANTS)
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
NUM_CLASSES = 100
PROFILE_TOP = 15


class Classifier(nn.Module):
    """The backbone's last output through a linear head; ``probe``: the backbone runs
    without a graph (linear probing)."""

    def __init__(self, backbone, num_classes=NUM_CLASSES, probe=False):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dims, num_classes)
        self.probe = probe

    def forward(self, img):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.probe):
            features = self.backbone(img)[-1]
        return self.head(features)


def backbone_class(arch):
    return PromptedSwin if arch.startswith('swin_') else PromptedViT


def variants_of(arch):
    return SWIN_VARIANTS if backbone_class(arch) is PromptedSwin else VARIANTS


def method_name(arch, method):
    return BASELINES[method] if method in BASELINES else variants_of(arch)[method][0]


def default_img_size(arch):
    """The input size timm's pretrained config gives ``arch`` (224 if it gives none)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.input_size[-1] if cfg is not None and cfg.input_size else 224


def build(arch, method, p=0, img_size=224, arch_cfg=None, with_cp=False):
    """The Classifier of a row: ``method`` one of METHODS, ``p`` its prompt count."""
    prompt = None if method in BASELINES else variants_of(arch)[method][1](p)
    options = dict(arch=arch, img_size=img_size, prompt=prompt, frozen=method != FULL,
                   drop_path_rate=0.1, arch_cfg=arch_cfg)
    if with_cp:  # only when asked: backbones without the option still run the rest
        options['with_cp'] = True
    model = Classifier(backbone_class(arch)(**options), probe=method == LINEAR)
    if method == REFERENCE:
        # Back-propagate through the frozen blocks as prompt tuning does.
        model.backbone.timm_model.patch_embed.register_forward_hook(
            lambda m, i, out: out.requires_grad_())
    return model.train()


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one, so on CPU the
# attention itself would count as free.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def autocast(device, amp):
    """MMEngine's AmpOptimWrapper.optim_context: ``torch.autocast`` without the weight cache
    (off when ``amp`` is None)."""
    return torch.autocast(device, dtype=amp, enabled=amp is not None, cache_enabled=False)


def autocast_supported(device, amp):
    """Whether ``torch.autocast(device, amp)`` computes a matmul in ``amp``: torch versions
    without a dtype on a device warn and run in float32 instead."""
    x = torch.ones(2, 2, device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with autocast(device, amp):
                return torch.mm(x, x).dtype == amp
    except RuntimeError:
        return False


def grad_scaler(device, amp):
    """AmpOptimWrapper's GradScaler: on GPU for either dtype (the wrapper always has one);
    on CPU, where the wrapper does not run, for float16 only (bfloat16 has float32's range)."""
    if amp is None or (device != 'cuda' and amp is not torch.float16):
        return None
    return torch.amp.GradScaler(device)


def train_step(model, optimizer, img, target, amp=None, scaler=None):
    """One iteration as MMEngine's (Amp)OptimWrapper runs it: forward and loss under
    autocast; backward and the optimizer step outside it, through ``scaler`` if any."""
    with autocast(img.device.type, amp):
        loss = nn.functional.cross_entropy(model(img), target)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscales the gradients, skips the step on inf / nan
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def saved_activation_bytes(model, img, amp=None):
    """Bytes autograd holds for backward over one forward: the storages of the saved tensors,
    each once (q, k and v are views of one qkv output; a tensor saved by two ops is held
    once). Parameters are left out: frozen weights saved for input gradients cost nothing
    extra, and would hide what with_cp saves (ViT-B's weights are 330 MiB)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            held[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(img.device.type, amp):
            out = model(img).float().sum()
        out.backward()
    model.zero_grad(set_to_none=True)
    return sum(held.values())


def compiled(model, args):
    """``model`` as the timed steps run it: torch.compile'd with ``--compile``. Dynamo's
    cache is reset first: every row's new model would otherwise add entries for the same
    code until its cache limit, after which it silently runs eager."""
    if not args.compile:
        return model
    torch._dynamo.reset()
    return torch.compile(model, backend=args.compile_backend)


def _synchronize(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_steps(step, device, warmup, steps):
    """(seconds of the first warm-up step, median seconds per step, peak CUDA bytes or None)
    of ``step()`` run ``warmup`` times, then ``steps`` times timed: by CUDA events around
    each step on GPU, perf_counter on CPU. The peak is what the timed steps allocated on top
    of what was allocated before them."""
    _synchronize(device)
    start = time.perf_counter()
    step()  # with --compile, this compiles
    _synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    peak = None
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for begin, end in events:
            begin.record()
            step()
            end.record()
        torch.cuda.synchronize()
        seconds = [begin.elapsed_time(end) / 1e3 for begin, end in events]
        peak = torch.cuda.max_memory_allocated() - before
    else:
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    return first, statistics.median(seconds), peak


def prepare(model, batch, img_size, args):
    """``model`` on the device, and its train step as a function of the module to run (the
    model or its compiled wrapper): AdamW on what requires grad, a fixed random batch."""
    model.to(args.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = grad_scaler(args.device, args.amp)
    img = torch.randn(batch, 3, img_size, img_size, device=args.device)
    target = torch.randint(0, NUM_CLASSES, (batch, ), device=args.device)
    return img, lambda module: train_step(module, optimizer, img, target, args.amp, scaler)


def measure(model, batch, img_size, args, steps, count_flops=True):
    """dict(flops, seconds, first_seconds, memory) of ``model``'s train step: memory is the
    peak CUDA bytes of the timed steps on GPU, the saved activation bytes on CPU. FLOPs are
    None without ``count_flops``; seconds None when ``steps`` is 0."""
    img, step = prepare(model, batch, img_size, args)
    result = dict(flops=None, seconds=None, first_seconds=None, memory=None)
    if count_flops:  # on the eager model: compiled kernels are no aten ops to count
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
            step(model)
        result['flops'] = counter.get_total_flops()
    if args.device != 'cuda':
        result['memory'] = saved_activation_bytes(model, img, args.amp)
    if steps:
        runner = compiled(model, args)
        result['first_seconds'], result['seconds'], peak = time_steps(
            lambda: step(runner), args.device, args.warmup, steps)
        if args.device == 'cuda':
            result['memory'] = peak
    model.cpu()
    return result


def tuned_parameters(model):
    """What the optimizer steps, the head included (pruned E2VPT prompts left out)."""
    return parameter_report(model)['tuned']


def row_keys(args):
    """(method, P) of each row, in --methods order; the P=0 reference first when only
    --prompts asks for it (0 in it)."""
    keys = []
    if 0 in args.prompts and REFERENCE not in args.methods:
        keys.append((REFERENCE, 0))
    for method in args.methods:
        if method in BASELINES:
            keys.append((method, 0))
        else:
            keys += [(method, p) for p in args.prompts if p > 0]
    return keys


def _ratio(value, reference):
    return None if value is None or reference is None else value / reference


def measure_rows(arch, img_size, batch, args, on_row=None):
    """The rows of one (arch, image size, batch) table, each a dict: method (its key), name,
    P, tuned (parameters), flops, seconds (median per step), first_seconds (the first
    warm-up step's: with --compile, the compilation), memory (bytes), their ratios to the P=0
    reference (flops_x_p0, seconds_x_p0, memory_x_p0) and to full fine-tuning
    (seconds_x_full, memory_x_full; None when full is not in --methods), and with --with-cp
    cp_memory and cp_x_no_cp. ``on_row(row)`` is called as each row is done (the references
    are measured first), so a long run prints as it goes."""
    torch.manual_seed(0)

    def run(method, p=0):
        model = build(arch, method, p, img_size, args.arch_cfg)
        return dict(measure(model, batch, img_size, args, args.steps), method=method,
                    name=method_name(arch, method), P=p, tuned=tuned_parameters(model))

    base = run(REFERENCE)
    full = run(FULL) if FULL in args.methods else None
    rows = []
    for method, p in row_keys(args):
        row = dict(base if method == REFERENCE else full if method == FULL else run(method, p))
        for key in ('flops', 'seconds', 'memory'):
            row[f'{key}_x_p0'] = _ratio(row[key], base[key])
        for key in ('seconds', 'memory'):
            row[f'{key}_x_full'] = _ratio(row[key], full and full[key])
        if args.with_cp:
            # on GPU a warm-up and one step for the peak; on CPU one forward's saved bytes
            cp = build(arch, method, p, img_size, args.arch_cfg, with_cp=True)
            row['cp_memory'] = measure(cp, batch, img_size, args, 1 if args.device == 'cuda' else 0,
                                       count_flops=False)['memory']
            row['cp_x_no_cp'] = row['cp_memory'] / row['memory']
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _short(x):
    """4 significant digits (whole numbers from 1000 on): ViT-B's GFLOPs and a tiny test
    model's both stay readable."""
    return f'{x:.0f}' if abs(x) >= 1000 else f'{x:.4g}'


def setting(args):
    """Where and how the steps run, for table titles: device (threads or GPU), precision,
    eager or compiled, torch version."""
    where = (torch.cuda.get_device_name() if args.device == 'cuda'
             else f'{torch.get_num_threads()} threads')
    precision = f'amp {args.amp_name}' if args.amp is not None else 'fp32'
    mode = f'torch.compile ({args.compile_backend})' if args.compile else 'eager'
    return f'{args.device} ({where}), {precision}, {mode}, torch {torch.__version__}'


def table_columns(args):
    """(header, format) of each column of the training table; ``format(row)`` gives a cell."""
    mib = lambda key: lambda r: _short(r[key] / 2**20)  # noqa: E731
    ratio = lambda key, digits=2: lambda r: f'{r[key]:.{digits}f}'  # noqa: E731
    columns = [('method', lambda r: r['name']), ('P', lambda r: str(r['P'])),
               ('tuned params', lambda r: f'{r["tuned"]:,}'),
               ('train GFLOPs', lambda r: _short(r['flops'] / 1e9)), ('x P=0', ratio('flops_x_p0', 3)),
               ('step s', lambda r: f'{r["seconds"]:.4g}'), ('x P=0', ratio('seconds_x_p0'))]
    full = FULL in args.methods
    if full:
        columns.append(('x full', ratio('seconds_x_full')))
    columns += [('peak GPU MiB' if args.device == 'cuda' else 'saved act. MiB', mib('memory')),
                ('x P=0', ratio('memory_x_p0'))]
    if full:
        columns.append(('x full', ratio('memory_x_full')))
    if args.with_cp:
        columns += [('with_cp MiB', mib('cp_memory')), ('x no cp', ratio('cp_x_no_cp'))]
    if args.compile:
        columns.append(('first step s', lambda r: f'{r["first_seconds"]:.2f}'))
    return columns


def benchmark(arch, img_size, batch, args):
    """Prints the table of one (arch, image size, batch), a row as soon as it is measured;
    returns the rows (``measure_rows``)."""
    columns = table_columns(args)
    print(f'\n{arch}, {img_size} px, batch {batch}, {setting(args)}'
          + (f', arch_cfg {json.dumps(args.arch_cfg)}' if args.arch_cfg else ''))
    print('| ' + ' | '.join(name for name, _ in columns) + ' |')
    print('|---|' + '---:|' * (len(columns) - 1), flush=True)
    return measure_rows(arch, img_size, batch, args, on_row=lambda row: print(
        '| ' + ' | '.join(cell(row) for _, cell in columns) + ' |', flush=True))


# -- where the time of a train step goes ---------------------------------------------------
def _self_cuda_us(event):
    # torch >= 2.4 says "device" (and warns on "cuda"); older versions "cuda"
    if hasattr(event, 'self_device_time_total'):
        return event.self_device_time_total
    return getattr(event, 'self_cuda_time_total', 0)


def _outermost(event):
    """Whether no aten op encloses ``event`` (Python or autograd dispatched it)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith('aten::'):
            return False
        parent = parent.cpu_parent
    return True


# the ops scaled_dot_product_attention dispatches to, one per backend (and their backward)
ATTENTION_KERNELS = ('aten::_scaled_dot_product', 'aten::_flash_attention', 'aten::_efficient_attention',
                     'aten::_cudnn_attention')


def profile_step(arch, img_size, batch, method, p, args, top=PROFILE_TOP):
    """torch.profiler over one train step of ``method`` at P=``p`` (after ``args.warmup``
    steps, compiled with --compile, under --amp): dict(method, P, num_ops (aten op calls,
    nested ones included), num_outer_ops (those not inside another aten op), num_kernels
    (CUDA device events; 0 on CPU), attention ({attention kernel op: calls}: the backend
    each scaled_dot_product_attention got), sort ('self_cuda_us' on GPU, else
    'self_cpu_us'), top: the ``top`` host-side events by that self time, descending, as
    tuples (name, calls, self_cpu_us, self_cuda_us))."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    cuda = args.device == 'cuda'
    model = build(arch, method, p, img_size, args.arch_cfg)
    _, step = prepare(model, batch, img_size, args)
    runner = compiled(model, args)
    for _ in range(args.warmup):
        step(runner)
    _synchronize(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # acc_events: keep the events after the profile ends (newer torch warns otherwise)
    options = dict(acc_events=True) if 'acc_events' in inspect.signature(profile).parameters else {}
    with profile(activities=activities, **options) as prof:
        step(runner)
        _synchronize(args.device)
    model.cpu()
    events = prof.events()
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith('aten::')]
    sort = 'self_cuda_us' if cuda else 'self_cpu_us'
    rows = [(e.key, e.count, e.self_cpu_time_total, _self_cuda_us(e))
            for e in prof.key_averages() if e.device_type == DeviceType.CPU]
    rows.sort(key=lambda r: r[3] if cuda else r[2], reverse=True)
    # which attention kernel each SDPA call got (flash, memory-efficient, cuDNN, math, CPU)
    attention = collections.Counter(e.name for e in ops if e.name.startswith(ATTENTION_KERNELS))
    return dict(method=method, P=p, num_ops=len(ops), num_outer_ops=sum(map(_outermost, ops)),
                num_kernels=sum(e.device_type == DeviceType.CUDA for e in events),
                attention=dict(sorted(attention.items())),
                sort=sort, top=rows[:top])


SORT_NAMES = dict(self_cpu_us='self CPU', self_cuda_us='self CUDA')


def print_profile(arch, img_size, batch, profile, args):
    name = method_name(arch, profile['method'])
    print(f'\nprofile of one train step: {name} P={profile["P"]}, {arch}, {img_size} px, '
          f'batch {batch}, {setting(args)}')
    kernels = f', {profile["num_kernels"]:,} CUDA kernels' if args.device == 'cuda' else ''
    print(f'{profile["num_ops"]:,} aten op calls ({profile["num_outer_ops"]:,} outermost){kernels}; '
          f'top {len(profile["top"])} by {SORT_NAMES[profile["sort"]]} time:')
    if profile['attention']:
        print('attention kernels: ' + ', '.join(f'{name} x{count}' for name, count in profile['attention'].items()))
    print('| event | calls | self CPU ms | self CUDA ms |')
    print('|---|---:|---:|---:|')
    for event, calls, cpu_us, cuda_us in profile['top']:
        print(f'| {event} | {calls} | {cpu_us / 1e3:.3f} | {cuda_us / 1e3:.3f} |')
    sys.stdout.flush()


# -- several tasks on one backbone ---------------------------------------------------------
MULTITASK_CLASSES = 100
SINGLE = 'one model, single-task batch'
MULTI = 'MultiTaskModel, mixed batch'
SEPARATE = 'separate models, one per task'


def held_bytes(*modules):
    """Bytes of the parameters and buffers the modules hold (each tensor once)."""
    tensors = {}
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[id(t)] = t.numel() * t.element_size()
    return sum(tensors.values())


def random_task_state(method, generator):
    """A task's tuned tensors: the method's parameters moved off their init (masks and other
    buffers as they are)."""
    params = dict(method.named_parameters())
    return {k: v + 0.02 * torch.randn(v.shape, generator=generator) if k in params else v.clone()
            for k, v in method.state_dict().items()}


def write_random_tasks(method, embed_dims, count, folder):
    """``count`` tuned-only checkpoints (prompts + a LinearClsHead) of ``method`` in
    ``folder``, as MultiTaskModel's task specs; a task's head config travels with it."""
    from mmengine.config import Config
    head = dict(type='mmpretrain.LinearClsHead', num_classes=MULTITASK_CLASSES,
                in_channels=embed_dims, topk=(1, ))
    generator = torch.Generator().manual_seed(0)
    tasks = {}
    for index in range(count):
        state = {f'backbone.prompt.{k}': v for k, v in random_task_state(method, generator).items()}
        state['head.fc.weight'] = 0.02 * torch.randn(MULTITASK_CLASSES, embed_dims, generator=generator)
        state['head.fc.bias'] = torch.zeros(MULTITASK_CLASSES)
        path = osp.join(folder, f'task{index}.pth')
        meta = dict(mmvpt=dict(tuned_only=True, prompts={'backbone.prompt': type(method).__name__}))
        torch.save(dict(state_dict=state, meta=meta), path)
        tasks[f'task{index}'] = dict(checkpoint=path, config=Config(dict(model=dict(head=head))))
    return tasks


def single_task_model(backbone, task):
    """One task's own model: a copy of the backbone with the task's prompts, and its head."""
    state = torch.load(task['checkpoint'], map_location='cpu')['state_dict']
    model = Classifier(copy.deepcopy(backbone), MULTITASK_CLASSES)
    model.backbone.prompt.load_state_dict(
        {k[len('backbone.prompt.'):]: v for k, v in state.items() if k.startswith('backbone.prompt.')})
    model.head.load_state_dict({'weight': state['head.fc.weight'], 'bias': state['head.fc.bias']})
    return model.eval()


def measure_serving(models, run, batch, img_size, device, steps, cpu_time=False):
    """(images/s, peak CUDA bytes or None) of ``run(img)`` over a batch, eval mode, no grad:
    one warm-up, then ``steps`` timed calls, of which the fastest counts (on shared CPUs
    other processes only ever slow a call down). On GPU the models move there first, so the
    peak counts their weights too. ``cpu_time``: seconds of CPU time of this thread (with one
    torch thread, the work itself) instead of wall-clock seconds."""
    clock = time.thread_time if cpu_time else time.perf_counter
    peak = None
    if device == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for model in models:
        model.to(device).eval()
    img = torch.randn(batch, 3, img_size, img_size, device=device)
    with torch.no_grad():
        run(img)
        seconds = float('inf')
        for _ in range(steps):
            if device == 'cuda':
                torch.cuda.synchronize()
            start = clock()
            run(img)
            if device == 'cuda':
                torch.cuda.synchronize()
            seconds = min(seconds, clock() - start)
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated()
    for model in models:
        model.cpu()
    return batch / seconds, peak


def multitask_benchmark(arch, img_size, batch, name, prompt, p, args):
    """Prints the table of one (arch, image size, batch, method, P) for every --multitask N."""
    from mmvpt.apis import MultiTaskModel
    torch.manual_seed(0)
    base = backbone_class(arch)(arch=arch, img_size=img_size, prompt=prompt, frozen=True,
                                arch_cfg=args.arch_cfg)
    base.init_weights()  # no init_cfg: the random weights stand in for the pretrained ones
    base.eval()
    cuda = args.device == 'cuda'
    where = torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'
    print(f'\n{arch}, {img_size} px, batch {batch}, {name} P={p}, {args.device} ({where}), '
          f'eval, no grad' + (', CPU time' if args.cpu_time else '')
          + (f', arch_cfg {json.dumps(args.arch_cfg)}' if args.arch_cfg else ''))
    header = '| setup | tasks | backbones | weights MiB | weights bytes | x one model |'
    rule = '|---|---:|---:|---:|---:|---:|'
    if cuda:
        header += ' peak GPU MiB | x one model |'
        rule += '---:|---:|'
    rate_name = 'images/CPU-s' if args.cpu_time else 'images/s'
    print(header + f' {rate_name} | x single-task batch |')
    print(rule + '---:|---:|', flush=True)

    with tempfile.TemporaryDirectory() as folder:
        specs = write_random_tasks(base.prompt, base.embed_dims, max(args.multitask), folder)
        names = list(specs)
        one = single_task_model(base, specs[names[0]])
        ref_rate, ref_peak = measure_serving([one], one, batch, img_size, args.device, args.steps,
                                             args.cpu_time)
        ref_bytes = held_bytes(one)

        def row(setup, n, backbones, weights, rate, peak):
            line = (f'| {setup} | {n} | {backbones} | {_short(weights / 2**20)} | {weights:,} | '
                    f'{weights / ref_bytes:.3f} |')
            if cuda:
                line += f' {_short(peak / 2**20)} | {peak / ref_peak:.2f} |'
            print(line + f' {rate:.2f} | {rate / ref_rate:.2f} |', flush=True)

        row(SINGLE, 1, 1, ref_bytes, ref_rate, ref_peak)
        del one
        for n in args.multitask:
            tasks = torch.randint(n, (batch, ), generator=torch.Generator().manual_seed(n))
            multi = MultiTaskModel(copy.deepcopy(base), {k: specs[k] for k in names[:n]})
            index = tasks.to(args.device)
            rate, peak = measure_serving([multi], lambda img: multi(img, index), batch, img_size,
                                         args.device, args.steps, args.cpu_time)
            row(MULTI, n, 1, held_bytes(multi), rate, peak)
            del multi
            models = [single_task_model(base, specs[k]) for k in names[:n]]
            groups = [(models[t], (tasks == t).nonzero().flatten().to(args.device)) for t in range(n)]
            groups = [(model, rows) for model, rows in groups if rows.numel()]

            def separate(img):
                for model, rows in groups:
                    model(img[rows])
            rate, peak = measure_serving(models, separate, batch, img_size, args.device, args.steps,
                                         args.cpu_time)
            row(SEPARATE, n, n, held_bytes(*models), rate, peak)
            del models, groups


def _listed(kind):
    """argparse type: comma-separated values (``0,10,50``); spaces work too (nargs='+')."""
    return lambda text: [kind(v) for v in text.split(',') if v]


def _flat(lists):
    return [v for values in lists for v in values]


def _profile_spec(text):
    """argparse type of --profile: METHOD:P, a row of the table (P=0 for none, linear and
    full, P > 0 for a prompt method)."""
    method, colon, p = text.partition(':')
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f'{text}: unknown method {method!r}; choose from '
                                         f'{",".join(METHODS)}')
    if not colon or not p.strip().isdigit():
        raise argparse.ArgumentTypeError(f'{text}: give METHOD:P, e.g. {method}:'
                                         f'{0 if method in BASELINES else 10}')
    p = int(p)
    if method in BASELINES and p != 0:
        raise argparse.ArgumentTypeError(f'{text}: {method} has no prompts; use {method}:0')
    if method not in BASELINES and p == 0:
        raise argparse.ArgumentTypeError(f'{text}: a prompt method needs P > 0 '
                                         f'(P=0 is the reference, none:0)')
    return method, p


def parse_args(argv=None):
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
    args.arch, args.batch, args.prompts, args.methods = (
        _flat(args.arch), _flat(args.batch), _flat(args.prompts), _flat(args.methods))
    args.methods = list(dict.fromkeys(args.methods))  # a row once, in the order first given
    args.img_size = _flat(args.img_size) if args.img_size else None
    args.multitask = _flat(args.multitask) if args.multitask else None
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f'--methods {",".join(unknown)}: choose from {",".join(METHODS)}')
    if any(p < 0 for p in args.prompts):
        parser.error('--prompts: counts must be >= 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    cuda = args.device == 'cuda'
    if args.steps is None:
        args.steps = 10 if cuda and args.multitask is None else 3
    if args.steps < 1:
        parser.error('--steps: at least 1')
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    if args.warmup < 1:
        parser.error('--warmup: at least 1')
    if args.compile:
        args.compile_backend = args.compile_backend or 'inductor'
        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.compile_backend not in backends:
            parser.error(f'--compile-backend {args.compile_backend}: choose from {",".join(backends)}')
        args.warmup = max(args.warmup, 2)  # the first compiles, the second runs what was compiled
    elif args.compile_backend is not None:
        parser.error('--compile-backend: needs --compile')
    args.amp_name, args.amp = args.amp, AMP_DTYPES.get(args.amp)
    if args.amp is not None and not autocast_supported(args.device, args.amp):
        parser.error(f'--amp {args.amp_name}: torch {torch.__version__} has no {args.amp_name} '
                     f'autocast on {args.device}')
    if args.multitask is not None:
        if any(n < 1 for n in args.multitask):
            parser.error('--multitask: task counts must be >= 1')
        if not [m for m in args.methods if m not in BASELINES] or not [p for p in args.prompts if p > 0]:
            parser.error('--multitask: needs a prompt method (--methods, not only none, linear, '
                         'full) and a prompt count P > 0 (--prompts)')
        if args.with_cp:
            parser.error('--multitask measures inference: --with-cp does not apply')
        if args.amp is not None or args.compile or args.profile:
            parser.error('--multitask measures inference in fp32, eager: --amp, --compile and '
                         '--profile do not apply')
    if args.cpu_time:
        if args.multitask is None or args.device != 'cpu':
            parser.error('--cpu-time: for --multitask on --device cpu')
        if args.threads not in (None, 1):
            parser.error('--cpu-time: counts one thread\'s CPU time; use --threads 1 (the default here)')
        args.threads = 1
    if args.threads is not None and args.threads < 1:
        parser.error('--threads: at least 1')
    if args.arch_cfg is not None:
        if not isinstance(args.arch_cfg, dict):
            parser.error('--arch-cfg: a JSON object, e.g. \'{"embed_dim": 32, "depth": 2}\'')
        # JSON has no tuples; timm's Swin takes depths / num_heads as tuples
        args.arch_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in args.arch_cfg.items()}
    if args.with_cp:
        lacking = sorted({backbone_class(arch).__name__ for arch in args.arch
                          if 'with_cp' not in inspect.signature(backbone_class(arch)).parameters})
        if lacking:
            parser.error(f'--with-cp: {", ".join(lacking)} takes no with_cp option (yet)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for arch in args.arch:
        for img_size in args.img_size or [default_img_size(arch)]:
            for batch in args.batch:
                if args.multitask is None:
                    benchmark(arch, img_size, batch, args)
                    for method, p in args.profile:
                        print_profile(arch, img_size, batch,
                                      profile_step(arch, img_size, batch, method, p, args), args)
                    continue
                for key in args.methods:
                    if key in BASELINES:
                        continue
                    name, make = variants_of(arch)[key]
                    for p in args.prompts:
                        if p > 0:
                            multitask_benchmark(arch, img_size, batch, name, make(p), p, args)


if __name__ == '__main__':
    main()
