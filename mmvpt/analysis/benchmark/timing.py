"""One train step of a row's model as MMEngine's runner runs it, measured: FLOPs, time and
memory (:func:`measure`), and the rows of one table (:func:`measure_rows`)."""
import statistics
import time
import warnings

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmvpt.utils import parameter_report

from .rows import FULL, NUM_CLASSES, REFERENCE, build, method_name, row_keys


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


def compiled(model, options):
    """``model`` as the timed steps run it: torch.compile'd with ``options.compile``.
    Dynamo's cache is reset first: every row's new model would otherwise add entries for the
    same code until its cache limit, after which it silently runs eager."""
    if not options.compile:
        return model
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
    synchronize(device)
    start = time.perf_counter()
    step()  # with --compile, this compiles
    synchronize(device)
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
    if count_flops:  # on the eager model: compiled kernels are no aten ops to count
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
            step(model)
        result['flops'] = counter.get_total_flops()
    if options.device != 'cuda':
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


def measure_rows(arch, img_size, batch, options, on_row=None):
    """The rows of one (arch, image size, batch) table, each a dict: method (its key), name,
    P, tuned (parameters), flops, seconds (median per step), first_seconds (the first
    warm-up step's: with compile, the compilation), memory (bytes), their ratios to the P=0
    reference (flops_x_p0, seconds_x_p0, memory_x_p0) and to full fine-tuning
    (seconds_x_full, memory_x_full; None when full is not in ``options.methods``), and with
    ``options.with_cp`` cp_memory and cp_x_no_cp. ``on_row(row)`` is called as each row is
    done (the references are measured first), so a long run can print as it goes."""
    torch.manual_seed(0)

    def run(method, p=0):
        model = build(arch, method, p, img_size, options.arch_cfg)
        return dict(measure(model, batch, img_size, options, options.steps), method=method,
                    name=method_name(arch, method), P=p, tuned=tuned_parameters(model))

    base = run(REFERENCE)
    full = run(FULL) if FULL in options.methods else None
    rows = []
    for method, p in row_keys(options):
        row = dict(base if method == REFERENCE else full if method == FULL else run(method, p))
        for key in ('flops', 'seconds', 'memory'):
            row[f'{key}_x_p0'] = _ratio(row[key], base[key])
        for key in ('seconds', 'memory'):
            row[f'{key}_x_full'] = _ratio(row[key], full and full[key])
        if options.with_cp:
            # on GPU a warm-up and one step for the peak; on CPU one forward's saved bytes
            cp = build(arch, method, p, img_size, options.arch_cfg, with_cp=True)
            row['cp_memory'] = measure(cp, batch, img_size, options,
                                       1 if options.device == 'cuda' else 0,
                                       count_flops=False)['memory']
            row['cp_x_no_cp'] = row['cp_memory'] / row['memory']
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
