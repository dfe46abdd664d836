"""Writes configs/<method>/vit-b16_{vtab,fgvc}-<task>.py from the per-task recipes of
PROTOCOLS.md (prompt counts, lr, batch), and configs/<method>/swin-b_{vtab,fgvc}-<task>.py,
each inheriting the ViT-B config of its task with the backbone swapped for Swin-B. The files
are committed; tests check they match.

    python tools/misc/generate_configs.py [--out configs]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
from mmvpt.models.prompts import display_name  # noqa: E402
from mmvpt.utils.protocol_results import METHOD_FOLDERS  # noqa: E402

# Task tables are plain data here so the script needs no mmpretrain.
VTAB_CLASSES = dict(
    cifar=100, caltech101=102, dtd=47, oxford_flowers102=102, oxford_iiit_pet=37, svhn=10,
    sun397=397, patch_camelyon=2, eurosat=10, resisc45=45, diabetic_retinopathy=5,
    clevr_count=8, clevr_dist=6, dmlab=6, kitti=4, dsprites_loc=16, dsprites_ori=16,
    smallnorb_azi=18, smallnorb_ele=9)
FGVC_CLASSES = dict(cub=200, nabirds=555, flowers=102, dogs=120, cars=196)

# VPT-deep prompts / base lr / wd / batch of the three tasks whose values VPT published
# (KMnP/vpt demo.ipynb, its final runs "with the hyperparameters ... from our paper"); the rest
# are in a table the authors host outside the repository (issue #4), which we cannot read.
VPT_DEMO = dict(dmlab=(100, 1.0, 1e-3, 64), sun397=(5, 25., 1e-4, 128),
                eurosat=(100, 1.0, 1e-3, 64))
# E²VPT visual / key-value prompt lengths (the E²VPT paper).
E2VPT_VTAB = dict(caltech101=(32, 5), cifar=(5, 5), oxford_flowers102=(1, 1),
                  patch_camelyon=(10, 10), dsprites_loc=(5, 5), dsprites_ori=(5, 5))
E2VPT_VTAB_DEFAULT = (10, 5)
E2VPT_FGVC = (5, 5)
# CVPT prompts / lr (the CVPT paper); FGVC prompts / lr / wd / batch.
CVPT_VTAB = dict(
    cifar=(10, 1e-3), caltech101=(200, 1e-3), dtd=(10, 1e-3), oxford_flowers102=(5, 2e-3),
    oxford_iiit_pet=(5, 1e-3), svhn=(5, 1e-2), sun397=(10, 2e-3), patch_camelyon=(1, 1e-2),
    eurosat=(5, 5e-3), resisc45=(10, 5e-3), diabetic_retinopathy=(5, 5e-3),
    clevr_count=(20, 1e-3), clevr_dist=(50, 1e-3), dmlab=(200, 2e-3), kitti=(20, 5e-3),
    dsprites_loc=(20, 5e-3), dsprites_ori=(5, 5e-3), smallnorb_azi=(50, 5e-3),
    smallnorb_ele=(50, 1e-3))
CVPT_FGVC = dict(cub=(5, 5e-4, 0.05, 32), cars=(100, 2e-3, 0.05, 16), dogs=(10, 2e-4, 1e-5, 16),
                 flowers=(5, 1e-3, 0.05, 16), nabirds=(200, 2e-4, 1e-5, 16))
# iVPT N (CDC prompts) / k (AR prompts), the iVPT paper's Tables 15-16.
IVPT_VTAB = dict(
    cifar=(10, 10), caltech101=(10, 5), dtd=(10, 10), oxford_flowers102=(10, 50),
    oxford_iiit_pet=(10, 20), svhn=(50, 20), sun397=(5, 1), patch_camelyon=(30, 30),
    eurosat=(50, 5), resisc45=(10, 50), diabetic_retinopathy=(30, 30), clevr_count=(100, 50),
    clevr_dist=(50, 100), dmlab=(10, 10), kitti=(50, 10), dsprites_loc=(10, 1),
    dsprites_ori=(50, 1), smallnorb_azi=(50, 10), smallnorb_ele=(200, 1))
IVPT_FGVC = dict(cub=(10, 1), nabirds=(50, 10), flowers=(5, 10), dogs=(10, 10), cars=(10, 10))
# SSF lr / wd / drop-path per task, from the authors' train scripts (dongzelian/SSF,
# train_scripts/vit/vtab/<task>/train_ssf.sh and train_scripts/vit/fgvc/<task>/train_ssf.sh):
# AdamW, 100 epochs with 10 warm-up (the base schedule's), batch 32 on each of 2 GPUs. The
# released 2-GPU versions; the repository's history also holds 1-GPU ones (batch 128, 200-250
# epochs, some other lr) that we do not follow.
SSF_VTAB = dict(
    cifar=(5e-3, 5e-5, 0.), caltech101=(1e-3, 5e-2, 0.1), dtd=(5e-3, 5e-5, 0.),
    oxford_flowers102=(5e-3, 5e-5, 0.), oxford_iiit_pet=(5e-3, 5e-5, 0.), svhn=(1e-2, 5e-5, 0.),
    sun397=(5e-3, 5e-5, 0.), patch_camelyon=(5e-3, 5e-5, 0.), eurosat=(3e-3, 5e-2, 0.2),
    resisc45=(2e-3, 5e-5, 0.1), diabetic_retinopathy=(5e-3, 5e-5, 0.2),
    clevr_count=(2e-3, 5e-2, 0.1), clevr_dist=(5e-2, 5e-2, 0.1), dmlab=(5e-3, 5e-5, 0.1),
    kitti=(1e-2, 5e-5, 0.), dsprites_loc=(1e-2, 5e-5, 0.), dsprites_ori=(5e-3, 5e-5, 0.2),
    smallnorb_azi=(2e-2, 5e-5, 0.1), smallnorb_ele=(5e-3, 5e-2, 0.2))
SSF_FGVC = dict(cub=(1e-2, 5e-2, 0.), nabirds=(2e-4, 5e-2, 0.1), flowers=(1e-2, 5e-2, 0.1),
                dogs=(2.5e-4, 5e-2, 0.), cars=(2e-2, 5e-2, 0.))
SSF_BATCH = 64  # 32 per GPU x 2 GPUs
# LoRA / Adapter on VTAB-1k, one recipe for every task: NOAH's baseline scripts
# (ZhangYuanhan-AI/NOAH, configs/{LoRA,Adapter}/VTAB/slurm_train_*_vtab.sh): AdamW, batch 64,
# 100 epochs, rank / width 8; warm-up 10 epochs and drop-path 0.1 are supernet_train_prompt.py's
# defaults. No source gives their FGVC recipe, nor AdaptFormer's or BitFit's on either benchmark.
NOAH_VTAB = dict(lr=1e-3, weight_decay=1e-4, batch=64)

METHODS = ('vpt', 'e2vpt', 'cvpt', 'ivpt', 'linear', 'full', 'lora', 'adaptformer', 'adapter', 'ssf',
           'bitfit')


def method_name(method):
    """The display name of a method folder's method (VPT-deep, ..., Full fine-tuning)."""
    prompt_type, frozen = METHOD_FOLDERS[method]
    return display_name(prompt_type, frozen=frozen)


def recipe(method, benchmark, task):
    """(prompt options, other backbone options, dataloader options, optimizer options, note)
    for one task."""
    prompt, backbone, loader, optimizer, note = {}, {}, {}, {}, ''
    if method == 'vpt' and benchmark == 'vtab' and task in VPT_DEMO:
        tokens, base_lr, wd, batch = VPT_DEMO[task]
        prompt, loader = dict(num_tokens=tokens), dict(batch_size=batch)
        optimizer = dict(lr=base_lr * batch / 256, weight_decay=wd)
        note = (f'{tokens} prompts, base lr {base_lr:g} (x {batch} / 256), wd {wd:g}, batch '
                f"{batch}: VPT's own (KMnP/vpt demo.ipynb, \"the same from our paper\").")
    elif method == 'vpt':
        prompt = dict(num_tokens=10)
        note = ('10 prompts is our default; VPT chose the prompt length per task (tools/protocol.py '
                'searches it).')
    elif method == 'e2vpt':
        visual, kv = (E2VPT_VTAB.get(task, E2VPT_VTAB_DEFAULT) if benchmark == 'vtab'
                      else E2VPT_FGVC)
        prompt = dict(num_tokens=visual, num_kv_tokens=kv)
        note = f'{visual} visual / {kv} key-value prompts (E2VPT paper).'
    elif method == 'cvpt':
        if benchmark == 'vtab':
            tokens, lr = CVPT_VTAB[task]
            loader, optimizer = dict(batch_size=32), dict(lr=lr)
            note = f'{tokens} prompts, lr {lr:g} (CVPT paper).'
        else:
            tokens, lr, wd, batch = CVPT_FGVC[task]
            loader, optimizer = dict(batch_size=batch), dict(lr=lr, weight_decay=wd)
            note = f'{tokens} prompts, lr {lr:g}, wd {wd:g}, batch {batch} (CVPT paper).'
        prompt = dict(num_tokens=tokens)
    elif method == 'ivpt':
        tokens, ar = (IVPT_VTAB if benchmark == 'vtab' else IVPT_FGVC)[task]
        prompt = dict(num_tokens=tokens, num_ar_tokens=ar)
        note = f'N = {tokens} CDC prompts, k = {ar} AR prompts (iVPT paper).'
    elif method == 'ssf':
        lr, wd, drop_path = (SSF_VTAB if benchmark == 'vtab' else SSF_FGVC)[task]
        backbone, loader = dict(drop_path_rate=drop_path), dict(batch_size=SSF_BATCH)
        optimizer = dict(lr=lr, weight_decay=wd)
        note = (f'lr {lr:g}, wd {wd:g}, drop-path {drop_path:g}, batch 32 x 2 GPUs '
                "(SSF's train script for this task).")
    elif method in ('lora', 'adapter') and benchmark == 'vtab':
        optimizer = dict(lr=NOAH_VTAB['lr'], weight_decay=NOAH_VTAB['weight_decay'])
        loader = dict(batch_size=NOAH_VTAB['batch'])
        note = (f"lr {optimizer['lr']:g}, wd {optimizer['weight_decay']:g}, batch {loader['batch_size']} "
                f"(NOAH's VTAB-1k {method_name(method)} script).")
    elif method in ('lora', 'adapter'):
        note = "lr 1e-3, wd 1e-4, batch 64: NOAH's VTAB-1k recipe as our default; no source gives FGVC's."
    elif method == 'adaptformer':
        note = "lr 1e-3, wd 1e-4, batch 64: our default; AdaptFormer's code has no VTAB-1k or FGVC recipe."
    elif method == 'bitfit':
        note = 'lr 1e-3, wd 1e-4, batch 64: our default; no source gives a BitFit recipe here.'
    return prompt, backbone, loader, optimizer, note


def _kwargs(options):
    return ', '.join(f'{k}={v!r}' for k, v in options.items())


def render(method, benchmark, task):
    classes = (VTAB_CLASSES if benchmark == 'vtab' else FGVC_CLASSES)[task]
    prompt, backbone, loader, optimizer, note = recipe(method, benchmark, task)
    dataset_base = 'vtab1k' if benchmark == 'vtab' else 'fgvc'
    title = 'VTAB-1k' if benchmark == 'vtab' else 'FGVC'
    backbone = _kwargs(backbone) + (', ' if backbone and prompt else '') + (
        f'prompt=dict({_kwargs(prompt)})' if prompt else '')
    backbone = f'backbone=dict({backbone}), ' if backbone else ''
    dataset = 'task=task'
    if method == 'ivpt':
        dataset += ', pipeline={{_base_.ivpt_train_pipeline}}'
    lines = [f'# {method_name(method)} on {title} {task} ({classes} classes).'] + (
        [f'# {note}'] if note else []) + [
        f"_base_ = ['../_base_/methods/{method}.py', '../_base_/datasets/{dataset_base}.py']",
        '',
        f'task = {task!r}',
        f'model = dict({backbone}head=dict(num_classes={classes}))',
        f'data_preprocessor = dict(num_classes={classes})',
        f'train_dataloader = dict({_kwargs(loader) + ", " if loader else ""}dataset=dict({dataset}))',
    ]
    test_dataset = 'task=task' + (', pipeline={{_base_.ivpt_test_pipeline}}' if method == 'ivpt' else '')
    lines += [f'val_dataloader = dict(dataset=dict({test_dataset}))',
              f'test_dataloader = dict(dataset=dict({test_dataset}))']
    if optimizer:
        lines.append(f'optim_wrapper = dict(optimizer=dict({_kwargs(optimizer)}))')
    return '\n'.join(lines) + '\n'


# E²VPT's Swin batch (the E²VPT paper), with VPT's lr scaling (base 2.5 x batch / 256).
E2VPT_SWIN_BATCH = 80


def render_swin(method, benchmark, task):
    """Swin-B on the task: the ViT-B config's recipe, the backbone swapped
    (configs/_base_/models/swin-b.py)."""
    title = 'VTAB-1k' if benchmark == 'vtab' else 'FGVC'
    lines = [f'# {method_name(method)} on {title} {task} with Swin-B ImageNet-22k; the recipe of the '
             'ViT-B config.']
    backbone = 'swin_b'
    if method == 'ivpt':
        lines.append('# iVPT: no attentive reinforcement, which needs a CLS token (Swin has none).')
        backbone = 'swin_b_without_ar'
    elif method == 'bitfit':
        lines.append("# BitFit: the relative-position bias tables too, as VPT's Swin \"Bias\" baseline.")
        backbone = 'swin_b_bias_tables'
    elif method == 'e2vpt':
        lines.append(f'# E2VPT: batch {E2VPT_SWIN_BATCH} on Swin (E2VPT paper), lr 2.5 x batch / 256; '
                     'pruning reaches the first stage only.')
    lines += [f"_base_ = ['./vit-b16_{benchmark}-{task}.py', '../_base_/models/swin-b.py']", '',
              f'model = dict(backbone={{{{_base_.{backbone}}}}}, head=dict(in_channels=1024))']
    if method == 'e2vpt':
        lines += [f'train_dataloader = dict(batch_size={E2VPT_SWIN_BATCH})',
                  f'optim_wrapper = dict(optimizer=dict(lr={2.5 * E2VPT_SWIN_BATCH / 256!r}))']
    return '\n'.join(lines) + '\n'


def all_configs():
    """{relative path: text} of every generated config."""
    configs = {}
    for method in METHODS:
        for benchmark, tasks in (('vtab', VTAB_CLASSES), ('fgvc', FGVC_CLASSES)):
            for task in tasks:
                configs[f'{method}/vit-b16_{benchmark}-{task}.py'] = render(method, benchmark, task)
                configs[f'{method}/swin-b_{benchmark}-{task}.py'] = render_swin(method, benchmark, task)
    return configs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=osp.join(osp.dirname(osp.dirname(osp.dirname(
        osp.abspath(__file__)))), 'configs'))
    args = parser.parse_args()
    for path, text in all_configs().items():
        target = osp.join(args.out, path)
        os.makedirs(osp.dirname(target), exist_ok=True)
        with open(target, 'w') as f:
            f.write(text)
    print(f'wrote {len(all_configs())} configs under {args.out}')


if __name__ == '__main__':
    main()
