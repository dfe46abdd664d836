"""Tiny weights and data for a smoke test of one's own config, from any folder (no downloads).

    python tools/misc/smoke_data.py OUT [--num-classes 5] [--size 32] [--per-class 8]
                                        [--arch vit_base_patch16_224] [--patch-size 8]
                                        [--embed-dim 64] [--depth 4] [--num-heads 4]

Writes, under OUT (relative to the folder it runs in):

- ``tiny_vit.pth``: random weights of ``--arch`` at the given sizes, in timm's checkpoint
  format (what a config's ``init_cfg`` loads; a config sets the same sizes in
  ``model.backbone.arch_cfg`` and ``img_size``);
- ``my_dataset/``: generated images (``--size`` px) and one list file per split,
  ``train.txt``, ``val.txt``, ``test.txt`` (``relative/path label`` per line), the layout of
  ``mmvpt.ListFileDataset`` and of configs/cvpt/vit-b16_my-dataset.py.

README "Your own dataset" runs it with a config kept outside the repository.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmvpt.utils import run_cli  # noqa: E402

# make_vtab_task's list files -> the own-dataset layout's
SPLITS = {'train800': 'train', 'val200': 'val', 'test': 'test'}


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text}: need a positive number')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', help='folder to write tiny_vit.pth and my_dataset/ in')
    parser.add_argument('--num-classes', type=positive, default=5)
    parser.add_argument('--size', type=positive, default=32, help='image and model size (px)')
    parser.add_argument('--per-class', type=positive, default=8,
                        help='training images per class (val and test: half as many)')
    parser.add_argument('--arch', default='vit_base_patch16_224', help='a timm ViT name')
    parser.add_argument('--patch-size', type=positive, default=8)
    parser.add_argument('--embed-dim', type=positive, default=64)
    parser.add_argument('--depth', type=positive, default=4)
    parser.add_argument('--num-heads', type=positive, default=4)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmvpt.testing import make_vtab_task, write_random_vit
    weights = write_random_vit(osp.join(args.out, 'tiny_vit.pth'), arch=args.arch,
                               img_size=args.size, patch_size=args.patch_size,
                               embed_dim=args.embed_dim, depth=args.depth,
                               num_heads=args.num_heads)
    n = args.num_classes * args.per_class
    task = make_vtab_task(args.out, 'my_dataset', num_classes=args.num_classes, num_train=n,
                          num_val=max(args.num_classes, n // 2),
                          num_test=max(args.num_classes, n // 2), size=args.size)
    for vtab_name, name in SPLITS.items():
        os.replace(osp.join(task, f'{vtab_name}.txt'), osp.join(task, f'{name}.txt'))
    os.remove(osp.join(task, 'train800val200.txt'))  # a VTAB-1k split, not this layout's
    print(f'{weights}: random {args.arch} weights (img_size={args.size}, '
          f'patch_size={args.patch_size}, embed_dim={args.embed_dim}, depth={args.depth}, '
          f'num_heads={args.num_heads})\n'
          f'{task}: {args.num_classes} classes, {", ".join(SPLITS.values())}.txt lists')


if __name__ == '__main__':
    run_cli(main)
