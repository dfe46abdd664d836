"""Writes configs/<method>/vit-b16_{vtab,fgvc}-<task>.py for every method with a config folder
(and linear probing and full fine-tuning) from what each method declares of its per-task
recipe (``config_recipe``: prompt counts, lr, batch, ...), and configs/<method>/swin-b_{vtab,
fgvc}-<task>.py, each inheriting the ViT-B config of its task with the backbone swapped for
Swin-B (``swin_config``). The files are committed; tests check they match.

    python tools/misc/generate_configs.py [--out configs]
"""
import argparse
import os
import os.path as osp
import sys
import textwrap

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmvpt.models.methods import method_classes  # noqa: E402
from mmvpt.models.prompts import display_name  # noqa: E402
from mmvpt.utils.protocol_results import method_folders  # noqa: E402

# Task tables are plain data here so the script needs no mmpretrain.
VTAB_CLASSES = dict(
    cifar=100, caltech101=102, dtd=47, oxford_flowers102=102, oxford_iiit_pet=37, svhn=10,
    sun397=397, patch_camelyon=2, eurosat=10, resisc45=45, diabetic_retinopathy=5,
    clevr_count=8, clevr_dist=6, dmlab=6, kitti=4, dsprites_loc=16, dsprites_ori=16,
    smallnorb_azi=18, smallnorb_ele=9)
FGVC_CLASSES = dict(cub=200, nabirds=555, flowers=102, dogs=120, cars=196)
# The repository's line length (pyproject.toml's [tool.ruff]): the configs are linted too.
LINE_LENGTH = 100


def method_class(folder):
    """The method class of a config folder; None for linear probing and full fine-tuning."""
    return next((cls for cls in method_classes() if cls.config_folder == folder), None)


def method_name(folder):
    """The display name of a config folder's method (VPT-deep, ..., Full fine-tuning)."""
    prompt_type, frozen = method_folders()[folder]
    return display_name(prompt_type, frozen=frozen)


def _kwargs(options):
    return ', '.join(f'{k}={v!r}' for k, v in options.items())


def _comment(text):
    """``text`` as comment lines of at most LINE_LENGTH characters."""
    return ['# ' + line for line in textwrap.wrap(text, LINE_LENGTH - 2, break_long_words=False,
                                                  break_on_hyphens=False)]


def _call(prefix, args):
    """``prefix`` (ending in ``dict(``), the arguments and ``)`` on one line, or one argument
    per line, aligned under the first, where that line would be longer than LINE_LENGTH."""
    line = prefix + ', '.join(args) + ')'
    if len(line) <= LINE_LENGTH:
        return line
    return prefix + (',\n' + ' ' * len(prefix)).join(args) + ')'


def render(folder, benchmark, task):
    classes = (VTAB_CLASSES if benchmark == 'vtab' else FGVC_CLASSES)[task]
    cls = method_class(folder)
    recipe = cls.config_recipe(benchmark, task) if cls is not None else {}
    prompt, backbone = recipe.get('prompt') or {}, recipe.get('backbone') or {}
    loader, optimizer = recipe.get('loader') or {}, recipe.get('optimizer') or {}
    preprocessor = recipe.get('preprocessor') or {}
    note = recipe.get('note')
    train_pipeline, test_pipeline = recipe.get('pipelines') or (None, None)
    dataset_base = 'vtab1k' if benchmark == 'vtab' else 'fgvc'
    title = 'VTAB-1k' if benchmark == 'vtab' else 'FGVC'
    backbone = _kwargs(backbone) + (', ' if backbone and prompt else '') + (
        f'prompt=dict({_kwargs(prompt)})' if prompt else '')
    model = ([f'backbone=dict({backbone})'] if backbone else []) + [
        f'head=dict(num_classes={classes})']
    dataset = 'task=task' + (f', pipeline={{{{_base_.{train_pipeline}}}}}' if train_pipeline
                             else '')
    lines = _comment(f'{method_name(folder)} on {title} {task} ({classes} classes).') + (
        _comment(note) if note else []) + [
        f"_base_ = ['../_base_/methods/{folder}.py', '../_base_/datasets/{dataset_base}.py']",
        '',
        f'task = {task!r}',
        _call('model = dict(', model),
        _call('data_preprocessor = dict(', [f'num_classes={classes}'] + (
            [_kwargs(preprocessor)] if preprocessor else [])),
        _call('train_dataloader = dict(', ([_kwargs(loader)] if loader else []) + [
            f'dataset=dict({dataset})']),
    ]
    test_dataset = 'task=task' + (f', pipeline={{{{_base_.{test_pipeline}}}}}' if test_pipeline
                                  else '')
    lines += [f'val_dataloader = dict(dataset=dict({test_dataset}))',
              f'test_dataloader = dict(dataset=dict({test_dataset}))']
    if optimizer:
        lines.append(f'optim_wrapper = dict(optimizer=dict({_kwargs(optimizer)}))')
    return '\n'.join(lines) + '\n'


def render_swin(folder, benchmark, task):
    """Swin-B on the task: the ViT-B config's recipe, the backbone swapped
    (configs/_base_/models/swin-b.py), as the method's ``swin_config`` says."""
    title = 'VTAB-1k' if benchmark == 'vtab' else 'FGVC'
    cls = method_class(folder)
    swin = cls.swin_config if cls is not None else dict(backbone='swin_b')
    lines = _comment(f'{method_name(folder)} on {title} {task} with Swin-B ImageNet-22k; the '
                     'recipe of the ViT-B config.')
    for comment in swin.get('comments', ()):
        lines += _comment(comment)
    lines += [f"_base_ = ['./vit-b16_{benchmark}-{task}.py', '../_base_/models/swin-b.py']", '',
              _call('model = dict(', [f'backbone={{{{_base_.{swin["backbone"]}}}}}',
                                      'head=dict(in_channels=1024)']),
              *swin.get('lines', ())]
    return '\n'.join(lines) + '\n'


def all_configs():
    """{relative path: text} of every generated config."""
    configs = {}
    for folder in method_folders():
        for benchmark, tasks in (('vtab', VTAB_CLASSES), ('fgvc', FGVC_CLASSES)):
            for task in tasks:
                configs[f'{folder}/vit-b16_{benchmark}-{task}.py'] = render(folder, benchmark, task)
                configs[f'{folder}/swin-b_{benchmark}-{task}.py'] = render_swin(folder, benchmark,
                                                                               task)
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
