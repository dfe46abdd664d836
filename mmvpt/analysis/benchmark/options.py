"""The options of ``tools/analysis/benchmark.py`` (:class:`BenchmarkOptions`), checked and
completed before anything is measured (:func:`check_options`); an option that cannot work is
an :class:`OptionError`, said in one line as the command line names it."""
import dataclasses

import torch

from .rows import BASELINES, METHODS, UNPROMPTED, VARIANTS
from .timing import autocast_supported

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


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
        example = 0 if method in UNPROMPTED else 10
        raise OptionError(f'{text}: give METHOD:P, e.g. {method}:{example}')
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
            raise OptionError(f'--compile-backend {o.compile_backend}: choose from '
                              f'{",".join(backends)}')
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



def describe_setting(options):
    """Where and how the steps run, for table titles: device (threads or GPU), precision,
    eager or compiled, torch version."""
    where = (torch.cuda.get_device_name() if options.device == 'cuda'
             else f'{torch.get_num_threads()} threads')
    precision = f'amp {options.amp}' if options.amp is not None else 'fp32'
    mode = f'torch.compile ({options.compile_backend})' if options.compile else 'eager'
    return f'{options.device} ({where}), {precision}, {mode}, torch {torch.__version__}'
