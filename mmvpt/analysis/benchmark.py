"""The cost of each prompt method on a timm ViT or Swin, next to linear probing and full
fine-tuning, measured as data: tuned parameters, train FLOPs, train-step time and memory
(:func:`measure_rows`), where the time of a train step goes (:func:`profile_step`), and the
cost of serving several tasks on one backbone (:func:`measure_serving`).
``tools/analysis/benchmark.py`` prints them; its docstring says what every number means.

The model of a row is the backbone and a 100-class linear head (:class:`Classifier`). Rows
(:data:`METHODS`): ``none``, the P=0 reference (the frozen backbone without prompts whose
train step still back-propagates through every block), ``linear`` (linear probing),
``full`` (full fine-tuning), the prompt methods' rows (:data:`VARIANTS`) at each P > 0 and
the other methods' rows (:data:`ADAPTER_ROWS`, one each), as the methods declare them.
"""
import collections
import copy
import dataclasses
import inspect
import statistics
import tempfile
import time
import warnings

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmvpt.models import PromptedSwin, PromptedViT
from mmvpt.models.methods import benchmark_rows, registered_type, takes_prompt_count
from mmvpt.models.prompts import display_name
from mmvpt.utils import parameter_report
from mmvpt.utils.tuned_checkpoint import load_tuned_checkpoint

# The methods' rows, as each method declares them (``benchmark_rows``): {row: (method class,
# what its label adds, options)}. Methods with a prompt count P are measured at each P > 0
# (VARIANTS), the others once (ADAPTER_ROWS).
ROWS = benchmark_rows()
VARIANTS = [row for row, (cls, _, _) in ROWS.items() if takes_prompt_count(cls)]
ADAPTER_ROWS = [row for row in ROWS if row not in VARIANTS]
REFERENCE = 'none'  # the frozen backbone without prompts: the P=0 row every "x P=0" refers to
LINEAR = 'linear'  # linear probing: no backward through the backbone
FULL = 'full'  # full fine-tuning: every weight trains; the row every "x full" refers to
BASELINES = {REFERENCE: 'none (frozen)', LINEAR: display_name(None, frozen=True),
             FULL: display_name(None, frozen=False)}
METHODS = list(BASELINES) + list(VARIANTS) + list(ADAPTER_ROWS)
#: rows measured once, at P = 0
UNPROMPTED = list(BASELINES) + list(ADAPTER_ROWS)
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
NUM_CLASSES = 100
PROFILE_TOP = 15


class OptionError(ValueError):
    """Options that cannot be measured, said in one line (named as the command line names
    them)."""


@dataclasses.dataclass
class BenchmarkOptions:
    """What to measure and how: the options of ``tools/analysis/benchmark.py``. Give them to
    :func:`check_options` before measuring; it fills in the defaults left None."""
    methods: list = dataclasses.field(default_factory=lambda: list(METHODS))
    prompts: list = dataclasses.field(default_factory=lambda: [0, 10, 50, 100, 200])
    device: str = 'cpu'
    amp: str = None  # 'bf16' or 'fp16': AmpOptimWrapper's mixed precision; None: fp32
    compile: bool = False
    compile_backend: str = None  # default inductor with compile
    with_cp: bool = False  # also the memory with gradient checkpointing
    steps: int = None  # timed steps (default 10 on cuda, 3 on cpu; 3 forwards for multitask)
    warmup: int = None  # untimed steps before them (default 3 on cuda, 1 on cpu)
    arch_cfg: dict = None  # the backbone's arch_cfg
    profile: list = dataclasses.field(default_factory=list)  # [(method, P)] to profile
    multitask: list = None  # task counts N: measure serving instead of training
    threads: int = None  # torch CPU threads
    cpu_time: bool = False  # multitask on CPU: time by one thread's CPU seconds

    @property
    def amp_dtype(self):
        return AMP_DTYPES.get(self.amp)


def parse_profile_spec(text):
    """``METHOD:P`` -> (method, P): a row of the table (P=0 for none, linear and full, P > 0
    for a prompt method)."""
    method, colon, p = text.partition(':')
    if method not in METHODS:
        raise OptionError(f'{text}: unknown method {method!r}; choose from {",".join(METHODS)}')
    if not colon or not p.strip().isdigit():
        raise OptionError(f'{text}: give METHOD:P, e.g. {method}:{0 if method in UNPROMPTED else 10}')
    p = int(p)
    if method in UNPROMPTED and p != 0:
        raise OptionError(f'{text}: {method} has no prompts; use {method}:0')
    if method not in UNPROMPTED and p == 0:
        raise OptionError(f'{text}: a prompt method needs P > 0 (P=0 is the reference, none:0)')
    return method, p


def check_options(options):
    """``options`` checked, with their defaults filled in (a new object); an
    :class:`OptionError` names the first option that cannot work."""
    o = dataclasses.replace(options, methods=list(dict.fromkeys(options.methods)),
                            prompts=list(options.prompts), profile=list(options.profile))
    unknown = sorted(set(o.methods) - set(METHODS))
    if unknown:
        raise OptionError(f'--methods {",".join(unknown)}: choose from {",".join(METHODS)}')
    if any(p < 0 for p in o.prompts):
        raise OptionError('--prompts: counts must be >= 0')
    if o.device not in ('cpu', 'cuda'):
        raise OptionError(f'--device {o.device}: choose from cpu,cuda')
    if o.device == 'cuda' and not torch.cuda.is_available():
        raise OptionError('--device cuda: no CUDA device is available')
    cuda = o.device == 'cuda'
    if o.steps is None:
        o.steps = 10 if cuda and o.multitask is None else 3
    if o.steps < 1:
        raise OptionError('--steps: at least 1')
    if o.warmup is None:
        o.warmup = 3 if cuda else 1
    if o.warmup < 1:
        raise OptionError('--warmup: at least 1')
    if o.compile:
        o.compile_backend = o.compile_backend or 'inductor'
        backends = torch._dynamo.list_backends(exclude_tags=())
        if o.compile_backend not in backends:
            raise OptionError(f'--compile-backend {o.compile_backend}: choose from {",".join(backends)}')
        o.warmup = max(o.warmup, 2)  # the first compiles, the second runs what was compiled
    elif o.compile_backend is not None:
        raise OptionError('--compile-backend: needs --compile')
    if o.amp is not None:
        if o.amp not in AMP_DTYPES:
            raise OptionError(f'--amp {o.amp}: choose from {",".join(AMP_DTYPES)}')
        if not autocast_supported(o.device, o.amp_dtype):
            raise OptionError(f'--amp {o.amp}: torch {torch.__version__} has no {o.amp} '
                              f'autocast on {o.device}')
    if o.multitask is not None:
        if any(n < 1 for n in o.multitask):
            raise OptionError('--multitask: task counts must be >= 1')
        served = [m for m in o.methods if m not in BASELINES]
        if not served or (set(served) <= set(VARIANTS) and not [p for p in o.prompts if p > 0]):
            raise OptionError('--multitask: needs a tuning method (--methods, not only none, '
                              'linear, full) and, for a prompt method, a prompt count P > 0 '
                              '(--prompts)')
        if o.with_cp:
            raise OptionError('--multitask measures inference: --with-cp does not apply')
        if o.amp is not None or o.compile or o.profile:
            raise OptionError('--multitask measures inference in fp32, eager: --amp, --compile '
                              'and --profile do not apply')
    if o.cpu_time:
        if o.multitask is None or o.device != 'cpu':
            raise OptionError('--cpu-time: for --multitask on --device cpu')
        if o.threads not in (None, 1):
            raise OptionError('--cpu-time: counts one thread\'s CPU time; use --threads 1 (the '
                              'default here)')
        o.threads = 1
    if o.threads is not None and o.threads < 1:
        raise OptionError('--threads: at least 1')
    if o.arch_cfg is not None:
        if not isinstance(o.arch_cfg, dict):
            raise OptionError('--arch-cfg: a JSON object, e.g. \'{"embed_dim": 32, "depth": 2}\'')
        # JSON has no tuples; timm's Swin takes depths / num_heads as tuples
        o.arch_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in o.arch_cfg.items()}
    return o


# -- the model of a row ----------------------------------------------------------------------
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


def method_row(arch, method, p):
    """(what the row's label adds, prompt config) of a method's row on ``arch``, at P = ``p``
    for a method with a prompt count."""
    cls = ROWS[method][0]
    backbone = 'swin' if backbone_class(arch) is PromptedSwin else 'vit'
    suffix, options = cls.benchmark_row(method, backbone)
    config = dict(type=registered_type(cls), **options)
    if method in VARIANTS:
        config['num_tokens'] = p
    return suffix, config


def prompt_config(arch, method, p):
    """The prompt config of a row (None for linear probing, full fine-tuning and P=0)."""
    if method in BASELINES:
        return None
    return method_row(arch, method, p)[1]


def method_name(arch, method):
    """A row's name: the method's display name and what the row adds to it."""
    if method in BASELINES:
        return BASELINES[method]
    suffix, config = method_row(arch, method, 1)
    return display_name(config) + suffix


def default_img_size(arch):
    """The input size timm's pretrained config gives ``arch`` (224 if it gives none)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.input_size[-1] if cfg is not None and cfg.input_size else 224


def build(arch, method, p=0, img_size=224, arch_cfg=None, with_cp=False):
    """The Classifier of a row: ``method`` one of METHODS, ``p`` its prompt count."""
    backbone = backbone_class(arch)(arch=arch, img_size=img_size, prompt=prompt_config(arch, method, p),
                                    frozen=method != FULL, drop_path_rate=0.1, arch_cfg=arch_cfg,
                                    with_cp=with_cp)
    model = Classifier(backbone, probe=method == LINEAR)
    if method == REFERENCE:
        # Back-propagate through the frozen blocks as prompt tuning does.
        model.backbone.timm_model.patch_embed.register_forward_hook(
            lambda m, i, out: out.requires_grad_())
    return model.train()


# -- one train step --------------------------------------------------------------------------
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


def row_keys(options):
    """(method, P) of each row, in ``options.methods`` order; the P=0 reference first when
    only ``options.prompts`` asks for it (0 in it)."""
    keys = []
    if 0 in options.prompts and REFERENCE not in options.methods:
        keys.append((REFERENCE, 0))
    for method in options.methods:
        if method in UNPROMPTED:
            keys.append((method, 0))
        else:
            keys += [(method, p) for p in options.prompts if p > 0]
    return keys


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


def describe_setting(options):
    """Where and how the steps run, for table titles: device (threads or GPU), precision,
    eager or compiled, torch version."""
    where = (torch.cuda.get_device_name() if options.device == 'cuda'
             else f'{torch.get_num_threads()} threads')
    precision = f'amp {options.amp}' if options.amp is not None else 'fp32'
    mode = f'torch.compile ({options.compile_backend})' if options.compile else 'eager'
    return f'{options.device} ({where}), {precision}, {mode}, torch {torch.__version__}'


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
    _synchronize(options.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # acc_events: keep the events after the profile ends (newer torch warns otherwise)
    extra = dict(acc_events=True) if 'acc_events' in inspect.signature(profile).parameters else {}
    with profile(activities=activities, **extra) as prof:
        step(runner)
        _synchronize(options.device)
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


def single_task_model(backbone, task):
    """One task's own model: a copy of the backbone with the task's prompts, and its head."""
    state, _ = load_tuned_checkpoint(task['checkpoint'])
    model = Classifier(copy.deepcopy(backbone), MULTITASK_CLASSES)
    model.backbone.prompt.load_state_dict(
        {k[len('backbone.prompt.'):]: v for k, v in state.items() if k.startswith('backbone.prompt.')})
    model.head.load_state_dict({'weight': state['head.fc.weight'], 'bias': state['head.fc.bias']})
    return model.eval()


def time_serving(models, run, batch, img_size, device, steps, cpu_time=False):
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


def measure_serving(arch, img_size, batch, method, p, options, on_row=None):
    """Serving tasks of ``method`` (a key of VARIANTS at P=``p``, or of ADAPTER_ROWS with
    ``p`` 0) on one backbone, eval mode,
    no grad, for every N of ``options.multitask``: the rows of one table, each a dict: setup
    (SINGLE, MULTI or SEPARATE), tasks (N), backbones (held), weights (bytes of parameters
    and buffers), weights_x_one, peak (CUDA bytes, None on CPU), peak_x_one, rate (images
    per second, or per CPU second with ``options.cpu_time``) and rate_x_single, the ratios
    to the first row: one model on a batch of one task. ``on_row`` as in
    :func:`measure_rows`.

    The tasks are random tuned tensors (prompts and a 100-class LinearClsHead each, see
    :func:`mmvpt.testing.write_random_tasks`) written as tuned-only checkpoints to a
    temporary folder and loaded by MultiTaskModel; the backbone's weights are random too (the
    cost does not depend on them)."""
    from mmvpt.apis import MultiTaskModel
    from mmvpt.testing import write_random_tasks
    torch.manual_seed(0)
    base = backbone_class(arch)(arch=arch, img_size=img_size, prompt=prompt_config(arch, method, p),
                                frozen=True, arch_cfg=options.arch_cfg)
    base.init_weights()  # no init_cfg: the random weights stand in for the pretrained ones
    base.eval()
    rows = []

    def measured(setup, n, models, run):
        rate, peak = time_serving(models, run, batch, img_size, options.device, options.steps,
                                  options.cpu_time)
        row = dict(setup=setup, tasks=n, backbones=1 if setup != SEPARATE else n,
                   weights=held_bytes(*models), rate=rate, peak=peak)
        reference = rows[0] if rows else row
        row.update(weights_x_one=row['weights'] / reference['weights'],
                   rate_x_single=row['rate'] / reference['rate'],
                   peak_x_one=None if peak is None else peak / reference['peak'])
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with tempfile.TemporaryDirectory() as folder:
        specs = write_random_tasks(base, max(options.multitask), folder, MULTITASK_CLASSES)
        names = list(specs)
        one = single_task_model(base, specs[names[0]])
        measured(SINGLE, 1, [one], one)
        del one
        for n in options.multitask:
            tasks = torch.randint(n, (batch, ), generator=torch.Generator().manual_seed(n))
            multi = MultiTaskModel(copy.deepcopy(base), {k: specs[k] for k in names[:n]})
            index = tasks.to(options.device)
            measured(MULTI, n, [multi], lambda img: multi(img, index))
            del multi
            models = [single_task_model(base, specs[k]) for k in names[:n]]
            groups = [(models[t], (tasks == t).nonzero().flatten().to(options.device))
                      for t in range(n)]
            groups = [(model, samples) for model, samples in groups if samples.numel()]

            def separate(img):
                for model, samples in groups:
                    model(img[samples])
            measured(SEPARATE, n, models, separate)
            del models, groups
    return rows
