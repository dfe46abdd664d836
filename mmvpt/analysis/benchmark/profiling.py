"""Where the time of a train step goes: torch.profiler over one step of a row
(:func:`profile_step`)."""
import collections
import inspect

import torch

from .rows import build
from .timing import compiled, prepare, synchronize

PROFILE_TOP = 15


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
ATTENTION_KERNELS = ('aten::_scaled_dot_product', 'aten::_flash_attention',
                     'aten::_efficient_attention', 'aten::_cudnn_attention')


def profile_step(arch, img_size, batch, method, p, options, top=PROFILE_TOP):
    """torch.profiler over one train step of ``method`` at P=``p`` (after
    ``options.warmup`` steps, compiled with ``options.compile``, under ``options.amp``):
    dict(method, P, num_ops (aten op calls, nested ones included), num_outer_ops (those not
    inside another aten op), num_kernels (CUDA device events; 0 on CPU), attention
    ({attention kernel op: calls}: the backend each scaled_dot_product_attention got), sort
    ('self_cuda_us' on GPU, else 'self_cpu_us'), top: the ``top`` host-side events by that
    self time, descending, as tuples (name, calls, self_cpu_us, self_cuda_us))."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    cuda = options.device == 'cuda'
    model = build(arch, method, p, img_size, options.arch_cfg)
    _, step = prepare(model, batch, img_size, options)
    runner = compiled(model, options)
    for _ in range(options.warmup):
        step(runner)
    synchronize(options.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # acc_events: keep the events after the profile ends (newer torch warns otherwise)
    extra = dict(acc_events=True) if 'acc_events' in inspect.signature(profile).parameters else {}
    with profile(activities=activities, **extra) as prof:
        step(runner)
        synchronize(options.device)
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
