"""One train step of a row's model as MMEngine's runner runs it, measured: FLOPs, time and
memory (:func:`measure`), and the rows of one table (:func:`measure_rows`)."""
import contextlib
import os
import statistics
import time
import warnings
from functools import partial

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmvpt.utils import parameter_report

from .rows import FULL, NUM_CLASSES, REFERENCE, VARIANTS, build, method_name, row_keys


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


def compiled(model, options, reset=True):
    """``model`` as the timed steps run it: torch.compile'd with ``options.compile``.
    Dynamo's cache is reset first (unless not ``reset``): every row's new model would
    otherwise add entries for the same code until its cache limit, after which it silently
    runs eager."""
    if not options.compile:
        return model
    if reset:
        torch._dynamo.reset()
    return torch.compile(model, backend=options.compile_backend)


def synchronize(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_steps(step, device, warmup, steps):
    """(seconds of the first warm-up step, median seconds per step, peak CUDA bytes or None)
    of ``step()`` run ``warmup`` times, then ``steps`` times timed: by CUDA events around
    each step on GPU, perf_counter on CPU. The peak is what the timed steps allocated on top
    of what was allocated before them."""
    first = warm_up(step, device, warmup)
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


def warm_up(step, device, warmup):
    """Runs ``step()`` ``warmup`` times (at least once); the first run's seconds (with
    --compile: the compilation)."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    return first


def count_step(model, img, step, options):
    """(FLOPs of one train step, counted on the eager model: compiled kernels are no aten
    ops to count; the bytes it saves for backward on CPU, None on GPU)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        step(model)
    memory = None if options.device == 'cuda' else saved_activation_bytes(model, img,
                                                                          options.amp_dtype)
    return counter.get_total_flops(), memory


def prepare(model, batch, img_size, options):
    """``model`` on the device, and its train step as a function of the module to run (the
    model or its compiled wrapper): AdamW on what requires grad, a fixed random batch."""
    model.to(options.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = grad_scaler(options.device, options.amp_dtype)
    img = torch.randn(batch, 3, img_size, img_size, device=options.device)
    target = torch.randint(0, NUM_CLASSES, (batch, ), device=options.device)
    return img, lambda module: train_step(module, optimizer, img, target, options.amp_dtype, scaler)


def measure(model, batch, img_size, options, steps, count_flops=True):
    """dict(flops, seconds, first_seconds, memory) of ``model``'s train step: memory is the
    peak CUDA bytes of the timed steps on GPU, the saved activation bytes on CPU. FLOPs are
    None without ``count_flops``; seconds None when ``steps`` is 0."""
    img, step = prepare(model, batch, img_size, options)
    result = dict(flops=None, seconds=None, first_seconds=None, memory=None)
    if count_flops:
        result['flops'], result['memory'] = count_step(model, img, step, options)
    elif options.device != 'cuda':
        result['memory'] = saved_activation_bytes(model, img, options.amp_dtype)
    if steps:
        runner = compiled(model, options)
        result['first_seconds'], result['seconds'], peak = time_steps(
            lambda: step(runner), options.device, options.warmup, steps)
        if options.device == 'cuda':
            result['memory'] = peak
    model.cpu()
    return result


def tuned_parameters(model):
    """What the optimizer steps, the head included (pruned E2VPT prompts left out)."""
    return parameter_report(model)['tuned']


def _ratio(value, reference):
    return None if value is None or reference is None else value / reference


# A row's timed figures are trusted when its step times, and its steps' ratios to the
# references', vary by at most this factor (max / min) between rounds, and the machine's
# 1-minute load average stays at most LOAD_LIMIT per CPU (more runnable threads than CPUs
# means other jobs took turns with the timed steps).
SPREAD_LIMIT = 1.25
LOAD_LIMIT = 1.0


def machine_load():
    """The 1-minute load average (runnable threads, this process's included), or None where
    the OS keeps none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def resident_bytes(model):
    """Bytes a row's model keeps between steps: its parameters and buffers, and for each
    tuned parameter a gradient and AdamW's two moments."""
    held = sum(t.numel() * t.element_size()
               for t in list(model.parameters()) + list(model.buffers()))
    tuned = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return held + 3 * tuned


def memory_budget(device):
    """Bytes the models timed together may keep: half of what is free (the GPU's free memory;
    on CPU, /proc/meminfo's MemAvailable), the other half left to the steps' activations.
    None where it cannot be told (no limit)."""
    if device == 'cuda':
        return torch.cuda.mem_get_info()[0] // 2
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return None


def row_label(row):
    """A row's name, and its prompt count where it has one (the P=0 reference, the prompt
    methods)."""
    prompted = row['method'] == REFERENCE or row['method'] in VARIANTS
    return f'{row["name"]} P={row["P"]}' if prompted else row['name']


def _spread(values):
    """(min, median, max) of ``values``."""
    return min(values), statistics.median(values), max(values)


def _compile_limit(models):
    """Dynamo's recompile limit raised for ``models`` compiled models at once: each adds
    entries for the same code (other shapes, other prompt layouts), and past the limit a
    model silently runs eager."""
    name = 'recompile_limit' if hasattr(torch._dynamo.config, 'recompile_limit') \
        else 'cache_size_limit'
    return torch._dynamo.config.patch({name: max(8, models + 8)})


def _time_round(entries, device):
    """One train step of each entry in turn: {entry index: (seconds, peak CUDA bytes of the
    step over what was allocated before it, or None)}."""
    timed = {}
    if device == 'cuda':
        for i, entry in enumerate(entries):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            begin.record()
            entry['step'](entry['runner'])
            end.record()
            timed[i] = (begin, end, torch.cuda.max_memory_allocated() - before)
        torch.cuda.synchronize()
        return {i: (begin.elapsed_time(end) / 1e3, peak)
                for i, (begin, end, peak) in timed.items()}
    for i, entry in enumerate(entries):
        start = time.perf_counter()
        entry['step'](entry['runner'])
        timed[i] = (time.perf_counter() - start, None)
    return timed


def measure_rows(arch, img_size, batch, options, on_row=None, on_progress=None):
    """The rows of one (arch, image size, batch) table, each a dict: method (its key), name,
    P, tuned (parameters), flops, seconds (median per step; seconds_min, seconds_max and
    seconds_all, every timed step's, beside it), first_seconds (the first warm-up step's:
    with compile, the compilation), memory (bytes), their ratios to the P=0 reference
    (flops_x_p0, seconds_x_p0, memory_x_p0) and to full fine-tuning (seconds_x_full,
    memory_x_full; None when full is not in ``options.methods``), load (the highest 1-minute
    load average seen while the row was timed, None where the OS has none), and with
    ``options.with_cp`` cp_memory and cp_x_no_cp.

    The rows' timed steps are interleaved so that a change of the machine's load hits every
    row alike: every row's model is built (and warmed up) first, then each of
    ``options.steps`` rounds runs one step of every row in turn. A step ratio (seconds_x_p0,
    seconds_x_full) is the median over the rounds of this row's step over the reference's
    step of the same round; its min and max are ``<key>_min`` and ``<key>_max``. Where the
    models do not fit in memory together (half of what is free, :func:`memory_budget`), the
    rows are timed in groups, each with the references (P=0 and full fine-tuning) timed
    again beside them.

    ``on_row(row)`` is called as each row is done, in table order; ``on_progress(message)``
    with a line of progress as each model is built and each round timed."""
    torch.manual_seed(0)
    say = on_progress or (lambda message: None)
    started = time.perf_counter()
    cuda = options.device == 'cuda'
    wanted = row_keys(options)
    references = [(REFERENCE, 0)] + ([(FULL, 0)] if FULL in options.methods else [])
    others = [key for key in wanted if key not in references]
    total = len(references) + len(others)

    def prepare_row(method, p):
        """A row's model on the device, its step, FLOPs and (on CPU) saved bytes; with_cp's
        memory measured now, on a model of its own."""
        model = build(arch, method, p, img_size, options.arch_cfg)
        row = dict(method=method, name=method_name(arch, method), P=p,
                   tuned=tuned_parameters(model), first_seconds=None)
        img, step = prepare(model, batch, img_size, options)
        row['flops'], row['memory'] = count_step(model, img, step, options)
        if options.with_cp and (method, p) in wanted:
            # on GPU a warm-up and one step for the peak; on CPU one forward's saved bytes
            cp = build(arch, method, p, img_size, options.arch_cfg, with_cp=True)
            row['cp_memory'] = measure(cp, batch, img_size, options, 1 if cuda else 0,
                                       count_flops=False)['memory']
        built.append(method)
        say(f'built {row_label(row)} ({len(built)}/{total}), FLOPs and memory counted '
            f'[{time.perf_counter() - started:.0f} s]')
        return dict(row=row, model=model, step=step, resident=resident_bytes(model))

    def time_group(members):
        """Warm-up of each, then the interleaved rounds; their rows' timed figures."""
        if options.compile:
            torch._dynamo.reset()  # once per group: its models are compiled side by side
        with _compile_limit(len(members)) if options.compile else contextlib.nullcontext():
            for entry in members:
                runner = entry['runner'] = compiled(entry['model'], options, reset=False)
                first = warm_up(partial(entry['step'], runner), options.device, options.warmup)
                if entry['row']['first_seconds'] is None:
                    entry['row']['first_seconds'] = first
            times = [[] for _ in members]
            peaks = [0] * len(members)
            load = machine_load()
            for round_ in range(options.steps):
                for i, (seconds, peak) in _time_round(members, options.device).items():
                    times[i].append(seconds)
                    peaks[i] = max(peaks[i], peak or 0)
                now = machine_load()
                load = None if now is None else max(now, load or 0)
                say(f'timed round {round_ + 1}/{options.steps}: one step of each of '
                    f'{len(members)} rows [{time.perf_counter() - started:.0f} s]')
        return times, peaks, load

    def finish(members, times, peaks, load):
        """The timed figures and ratios of the rows timed in ``members`` (references first)."""
        ref_times = times[0]
        full_times = times[1] if len(references) == 2 else None
        for entry, seconds, peak in zip(members, times, peaks):
            row = entry['row']
            if 'seconds' in row:  # a reference timed again beside a later group
                continue
            row['seconds_all'] = seconds
            row['seconds_min'], row['seconds'], row['seconds_max'] = _spread(seconds)
            row['load'] = load
            if cuda:
                row['memory'] = peak
            for name, reference in (('x_p0', ref_times), ('x_full', full_times)):
                ratios = None if reference is None else _spread(
                    [s / r for s, r in zip(seconds, reference)])
                (row[f'seconds_{name}_min'], row[f'seconds_{name}'],
                 row[f'seconds_{name}_max']) = ratios or (None, None, None)
            results[row['method'], row['P']] = row

    results = {}
    built = []
    entries = [prepare_row(*key) for key in references]  # held throughout
    group = []  # the other rows' models held now
    budget = memory_budget(options.device)
    held = sum(entry['resident'] for entry in entries)
    for key in others:
        entry = prepare_row(*key)
        if group and budget is not None and held + entry['resident'] > budget:
            say(f'the models do not fit in memory together: timing {len(group)} rows now, '
                'the references again with the next group')
            finish(entries + group, *time_group(entries + group))
            group = []  # their models freed
            held = sum(e['resident'] for e in entries)
        group.append(entry)
        held += entry['resident']
    finish(entries + group, *time_group(entries + group))
    for entry in entries:
        entry['model'].cpu()

    base = results[references[0]]
    full = results.get((FULL, 0))
    rows = []
    for key in wanted:
        row = dict(results[key])
        for name in ('flops', 'memory'):
            row[f'{name}_x_p0'] = _ratio(row[name], base[name])
        row['memory_x_full'] = _ratio(row['memory'], full and full['memory'])
        if options.with_cp:
            row['cp_x_no_cp'] = row['cp_memory'] / row['memory']
        rows.append(row)
        say(f'done: {row_label(row)}, step {row["seconds"]:.4g} s '
            f'(x P=0 {row["seconds_x_p0"]:.2f})')
        if on_row is not None:
            on_row(row)
    return rows


def timing_warnings(rows, steps, cpus=None, spread_limit=SPREAD_LIMIT, load_limit=LOAD_LIMIT):
    """Lines that say why the timed figures of ``rows`` are not to be trusted (none when
    they are): fewer than 3 timed steps (no spread to judge); a row whose step ratios (taken
    within each round) vary between rounds by more than ``spread_limit`` (max / min): the
    ratios are not to be trusted; a row whose step times do: the times are not (its ratios
    may still be, the reference's steps having slowed alike); a 1-minute load average above
    ``load_limit`` per CPU while timing."""
    cpus = cpus or os.cpu_count() or 1
    lines = []
    if steps < 3:
        lines.append(f'WARNING: {steps} timed step(s) per row: no spread to judge the step times '
                     'by; use --steps 5 or more for numbers to compare.')

    def spread_of(keys):
        """{row label: the largest max / min above the limit among ``keys``}."""
        found = {}
        for row in rows:
            for key in keys:
                low, high = row.get(f'{key}_min'), row.get(f'{key}_max')
                if low and high and high / low > spread_limit:
                    found[row_label(row)] = max(found.get(row_label(row), 0), high / low)
        worst = sorted(found.items(), key=lambda item: -item[1])
        more = f' and {len(worst) - 5} more' if len(worst) > 5 else ''
        return ', '.join(f'{label} {ratio:.2f}' for label, ratio in worst[:5]) + more

    ratios = spread_of(('seconds_x_p0', 'seconds_x_full'))
    if ratios:
        lines.append(f'WARNING: step ratios vary between rounds by more than {spread_limit:g}x '
                     f'(max / min: {ratios}): the ratios are not to be trusted; rerun on an '
                     'idle machine, with more --steps.')
    times = spread_of(('seconds', ))
    if times:
        lines.append(f'WARNING: step times vary between rounds by more than {spread_limit:g}x '
                     f'(max / min: {times}): the step times are not to be trusted'
                     + ('' if ratios else ' (the ratios, taken within each round, vary less)')
                     + '.')
    loads = [row['load'] for row in rows if row.get('load') is not None]
    if loads and max(loads) > load_limit * cpus:
        lines.append(f'WARNING: the 1-minute load average reached {max(loads):.2f} on {cpus} '
                     f'CPUs (this run\'s threads included) while timing: other jobs took CPU '
                     'time from the steps, the times and ratios are not to be trusted; rerun '
                     'on an idle machine.')
    return lines
