"""Cost of each prompt method on a timm ViT or Swin, and its ratio to the P=0 train step.

Tuned parameters, train FLOPs, train-step time and memory of each method and prompt count:

    python tools/analysis/benchmark.py [--arch vit_base_patch16_224 swin_base_patch4_window7_224]
        [--img-size 224] [--batch 8] [--prompts 0,10,50,100,200]
        [--methods vpt,vpt_batch,e2vpt,cvpt,cvpt_sample,ivpt,none] [--with-cp] [--device cpu|cuda]
        [--steps 3] [--arch-cfg JSON]

One markdown table per (arch, image size, batch). Swin names (``swin_*``) run on
PromptedSwin, every other name on PromptedViT; ``--arch-cfg`` is the backbone's
``arch_cfg`` (e.g. '{"embed_dim": 32, "depth": 2, "num_heads": 2}' for a tiny ViT). Swin
has no CLS token, so iVPT runs there without attention-guided reinforcement (AR).

The P=0 reference ('none') is the frozen backbone with no prompts whose train step still
back-propagates through every block (to the patch-embedding output), i.e. the cost
structure of prompt tuning without prompts. FLOPs are counted with torch's
FlopCounterMode over one forward + backward. Memory: peak CUDA memory on GPU; on CPU the
bytes autograd holds for backward (saved activations, each storage once, parameters left
out), which is what grows with P. ``--with-cp`` adds that memory with gradient checkpointing
(``with_cp=True``; on CPU the saved bytes are then each block's input plus what lies outside
the blocks, not the one block recomputed at a time in backward) and its ratio to without.

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
P = 0 have no per-task prompts and are skipped.
"""
import argparse
import copy
import inspect
import json
import os.path as osp
import sys
import tempfile
import time

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
REFERENCE = 'none'  # the frozen backbone without prompts: the P=0 row every ratio refers to
METHODS = list(VARIANTS) + [REFERENCE]


class Classifier(nn.Module):

    def __init__(self, backbone, num_classes=100):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dims, num_classes)

    def forward(self, img):
        return self.head(self.backbone(img)[-1])


def backbone_class(arch):
    return PromptedSwin if arch.startswith('swin_') else PromptedViT


def default_img_size(arch):
    """The input size timm's pretrained config gives ``arch`` (224 if it gives none)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.input_size[-1] if cfg is not None and cfg.input_size else 224


def build(arch, prompt, img_size=224, arch_cfg=None, with_cp=False):
    options = dict(arch=arch, img_size=img_size, prompt=prompt, drop_path_rate=0.1,
                   arch_cfg=arch_cfg)
    if with_cp:  # only when asked: backbones without the option still run the rest
        options['with_cp'] = True
    model = Classifier(backbone_class(arch)(**options))
    if prompt is None:
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


def train_step(model, optimizer, img, target):
    loss = nn.functional.cross_entropy(model(img), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def saved_activation_bytes(model, img):
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
        model(img).sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(held.values())


def measure(model, batch, img_size, device, steps, count_flops=True):
    """(train FLOPs, seconds per train step, memory) of ``model``; memory is peak CUDA memory
    over a warm-up and ``steps`` timed steps on GPU, saved activation bytes on CPU. FLOPs are
    None without ``count_flops``, seconds None when ``steps`` is 0."""
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    img = torch.randn(batch, 3, img_size, img_size, device=device)
    target = torch.randint(0, 100, (batch, ), device=device)
    flops = seconds = None
    if count_flops:
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
            train_step(model, optimizer, img, target)
        flops = counter.get_total_flops()
    memory = saved_activation_bytes(model, img) if device != 'cuda' else None
    if steps:
        if device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        train_step(model, optimizer, img, target)  # warm-up
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, img, target)
        if device == 'cuda':
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        if device == 'cuda':
            memory = torch.cuda.max_memory_allocated()
    model.cpu()
    return flops, seconds, memory


def _short(x):
    """4 significant digits (whole numbers from 1000 on): ViT-B's GFLOPs and a tiny test
    model's both stay readable."""
    return f'{x:.0f}' if abs(x) >= 1000 else f'{x:.4g}'


def benchmark(arch, img_size, batch, args):
    """Prints the table of one (arch, image size, batch)."""
    variants = SWIN_VARIANTS if backbone_class(arch) is PromptedSwin else VARIANTS
    torch.manual_seed(0)

    def build_model(prompt, with_cp=False):
        return build(arch, prompt, img_size, args.arch_cfg, with_cp)

    def cp_memory(prompt):
        # on GPU a warm-up and one step for the peak; on CPU one forward's saved bytes
        return measure(build_model(prompt, with_cp=True), batch, img_size, args.device,
                       1 if args.device == 'cuda' else 0, count_flops=False)[2]

    memory_name = 'peak GPU MiB' if args.device == 'cuda' else 'saved act. MiB'
    where = (torch.cuda.get_device_name() if args.device == 'cuda'
             else f'{torch.get_num_threads()} threads')
    print(f'\n{arch}, {img_size} px, batch {batch}, {args.device} ({where})'
          + (f', arch_cfg {json.dumps(args.arch_cfg)}' if args.arch_cfg else ''))
    header = f'| method | P | tuned params | train GFLOPs | x P=0 | step s | x P=0 | {memory_name} | x P=0 |'
    if args.with_cp:
        header += ' with_cp MiB | x no cp |'
    print(header)
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if args.with_cp else ''))
    measure(build_model(None), batch, img_size, args.device, 1, count_flops=False)  # warm-up
    base = measure(build_model(None), batch, img_size, args.device, args.steps)

    def row(name, p, tuned, result, prompt):
        flops, seconds, memory = result
        line = (f'| {name} | {p} | {tuned:,} | {_short(flops / 1e9)} | {flops / base[0]:.3f} | '
                f'{seconds:.3f} | {seconds / base[1]:.2f} | {_short(memory / 2**20)} | '
                f'{memory / base[2]:.2f} |')
        if args.with_cp:
            cp = cp_memory(prompt)
            line += f' {_short(cp / 2**20)} | {cp / memory:.2f} |'
        print(line, flush=True)

    if REFERENCE in args.methods or 0 in args.prompts:
        row('none (frozen)', 0, 0, base, None)
    for key in args.methods:
        if key == REFERENCE:
            continue
        name, make = variants[key]
        for p in args.prompts:
            if p == 0:
                continue
            prompt = make(p)
            model = build_model(prompt)
            tuned = parameter_report(model.backbone)['tuned']
            row(name, p, tuned, measure(model, batch, img_size, args.device, args.steps), prompt)


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', nargs='+', type=_listed(str), default=[['vit_base_patch16_224']],
                        help='timm ViT or Swin names (Swin: swin_*)')
    parser.add_argument('--img-size', nargs='+', type=_listed(int), default=None,
                        help="input sizes (default: each arch's pretrained size)")
    parser.add_argument('--batch', nargs='+', type=_listed(int), default=[[8]])
    parser.add_argument('--prompts', nargs='+', type=_listed(int), default=[[0, 10, 50, 100, 200]],
                        help='prompt counts P; 0 prints the reference row')
    parser.add_argument('--methods', nargs='+', type=_listed(str), default=[METHODS],
                        help=f'any of {",".join(METHODS)} (none: the P=0 reference row)')
    parser.add_argument('--with-cp', action='store_true',
                        help='add the memory with gradient checkpointing (backbone with_cp=True)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--steps', type=int, default=3,
                        help='timed train steps per row (--multitask: timed forwards)')
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
    args.img_size = _flat(args.img_size) if args.img_size else None
    args.multitask = _flat(args.multitask) if args.multitask else None
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f'--methods {",".join(unknown)}: choose from {",".join(METHODS)}')
    if any(p < 0 for p in args.prompts):
        parser.error('--prompts: counts must be >= 0')
    if args.steps < 1:
        parser.error('--steps: at least 1')
    if args.multitask is not None:
        if any(n < 1 for n in args.multitask):
            parser.error('--multitask: task counts must be >= 1')
        if not [m for m in args.methods if m != REFERENCE] or not [p for p in args.prompts if p > 0]:
            parser.error('--multitask: needs a prompt method (--methods, not only none) and a '
                         'prompt count P > 0 (--prompts)')
        if args.with_cp:
            parser.error('--multitask measures inference: --with-cp does not apply')
    if args.cpu_time:
        if args.multitask is None or args.device != 'cpu':
            parser.error('--cpu-time: for --multitask on --device cpu')
        if args.threads not in (None, 1):
            parser.error('--cpu-time: counts one thread\'s CPU time; use --threads 1 (the default here)')
        args.threads = 1
    if args.threads is not None and args.threads < 1:
        parser.error('--threads: at least 1')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
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
                    continue
                variants = SWIN_VARIANTS if backbone_class(arch) is PromptedSwin else VARIANTS
                for key in args.methods:
                    if key == REFERENCE:
                        continue
                    name, make = variants[key]
                    for p in args.prompts:
                        if p > 0:
                            multitask_benchmark(arch, img_size, batch, name, make(p), p, args)


if __name__ == '__main__':
    main()
