"""Fold a trained LoRA, SSF or BitFit into the frozen weights: a plain model that runs at the
frozen backbone's cost and computes what the method did.

    python tools/misc/merge_method.py CONFIG CHECKPOINT OUT.pth [--timm BACKBONE.pth]

OUT.pth is an MMEngine checkpoint of the whole model (backbone with the method merged, head,
neck) whose saved config has no method (``model.backbone.prompt=None``): tools/test.py,
tools/infer.py and the stock inferencers load it with that config, e.g.
``python tools/test.py CONFIG OUT.pth --cfg-options model.backbone.prompt=None``.
``--timm`` also writes the merged backbone in timm's key names, which
``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` and the
configs' ``init_cfg`` load. Adapter and AdaptFormer keep a non-linear bottleneck and cannot be
merged: the tool says so.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmengine.config import DictAction  # noqa: E402

from mmvpt.utils import run_cli  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='its checkpoint (tuned-only or full)')
    parser.add_argument('out', help='the merged model, an MMEngine checkpoint')
    parser.add_argument('--timm', metavar='BACKBONE.pth',
                        help='also the merged backbone in timm keys')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    from mmvpt.apis import merge_checkpoint
    args = parse_args(argv)
    name = merge_checkpoint(args.config, args.checkpoint, args.out, args.timm, args.cfg_options)
    print(f'{name} merged into the frozen weights: {args.out}')
    if args.timm:
        print(f'backbone in timm keys: {args.timm}')

if __name__ == '__main__':
    run_cli(main)
