"""Cost of each prompt method on ViT-B/16: tuned parameters, FLOPs, train-step time and
memory, and each one's ratio to the P=0 train step.

    python tools/analysis/benchmark.py [--batch 8] [--prompts 0 10 50 100 200]
        [--methods vpt e2vpt cvpt ivpt] [--device cpu|cuda] [--steps 3] [--arch ...]

The P=0 reference is the frozen backbone with no prompts whose train step still
back-propagates through every block (to the patch-embedding output), i.e. the cost
structure of prompt tuning without prompts. FLOPs are counted with torch's
FlopCounterMode over one forward + backward. Memory: peak CUDA memory on GPU; on CPU the
bytes autograd saves for backward (activations), which is what grows with P.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmvpt.models import PromptedViT  # noqa: E402
from mmvpt.utils import parameter_report  # noqa: E402

VARIANTS = {
    'vpt': ('VPT-deep', lambda p: dict(type='VPT', num_tokens=p)),
    'e2vpt': ('E2VPT (KV 10)', lambda p: dict(type='E2VPT', num_tokens=p, num_kv_tokens=10)),
    'cvpt': ('CVPT, batch dropout', lambda p: dict(type='CVPT', num_tokens=p, dropout_mode='batch')),
    'cvpt_sample': ('CVPT, sample dropout', lambda p: dict(type='CVPT', num_tokens=p,
                                                           dropout_mode='sample')),
    'ivpt': ('iVPT (k=10)', lambda p: dict(type='IVPT', num_tokens=p, num_ar_tokens=10)),
}


class Classifier(nn.Module):

    def __init__(self, backbone, num_classes=100):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dims, num_classes)

    def forward(self, img):
        return self.head(self.backbone(img)[-1])


def build(arch, prompt):
    model = Classifier(PromptedViT(arch=arch, prompt=prompt, drop_path_rate=0.1))
    if prompt is None:
        # Back-propagate through the frozen blocks as prompt tuning does.
        model.backbone.vit.patch_embed.register_forward_hook(lambda m, i, out: out.requires_grad_())
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


def measure(model, batch, device, steps):
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    img = torch.randn(batch, 3, 224, 224, device=device)
    target = torch.randint(0, 100, (batch, ), device=device)
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        train_step(model, optimizer, img, target)
    flops = counter.get_total_flops()
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(img).sum().backward()
    optimizer.zero_grad(set_to_none=True)
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
    memory = torch.cuda.max_memory_allocated() if device == 'cuda' else saved[0]
    model.cpu()
    return flops, seconds, memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='vit_base_patch16_224')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--prompts', type=int, nargs='+', default=[0, 10, 50, 100, 200])
    parser.add_argument('--methods', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--steps', type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    memory_name = 'peak GPU MiB' if args.device == 'cuda' else 'saved act. MiB'
    print(f'{args.arch}, batch {args.batch}, {args.device}'
          + (f' ({torch.cuda.get_device_name()})' if args.device == 'cuda' else
             f' ({torch.get_num_threads()} threads)'))
    print(f'| method | P | tuned params | train GFLOPs | x P=0 | step s | x P=0 | {memory_name} | x P=0 |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    measure(build(args.arch, None), args.batch, args.device, 1)  # warms the process up
    base = measure(build(args.arch, None), args.batch, args.device, args.steps)

    def row(name, p, tuned, result):
        flops, seconds, memory = result
        print(f'| {name} | {p} | {tuned:,} | {flops / 1e9:.1f} | {flops / base[0]:.3f} | '
              f'{seconds:.3f} | {seconds / base[1]:.2f} | {memory / 2**20:.0f} | '
              f'{memory / base[2]:.2f} |', flush=True)

    row('none (frozen)', 0, 0, base)
    for key in args.methods:
        name, make = VARIANTS[key]
        for p in args.prompts:
            if p == 0:
                continue
            prompt = make(p)
            model = build(args.arch, prompt)
            tuned = parameter_report(model.backbone)['tuned']
            row(name, p, tuned, measure(model, args.batch, args.device, args.steps))


if __name__ == '__main__':
    main()
