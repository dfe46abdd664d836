"""Fold a trained LoRA, SSF or BitFit into the frozen weights: a plain model that runs at the
frozen backbone's cost and computes what the method did.

    python tools/misc/merge_method.py CONFIG CHECKPOINT OUT.pth [--timm BACKBONE.pth]
                                      [--cfg-options k=v ...]

The model is built from the config saved in CHECKPOINT (MMEngine's runner saves it, with the
training run's --cfg-options applied), so those need not be passed again; CONFIG (with
--cfg-options) is used for a checkpoint that saves none. --cfg-options apply on top of either
(e.g. the pretrained backbone's path, if it moved). The tool says which config it used.

OUT.pth is an MMEngine checkpoint of the whole model (backbone with the method merged, head,
neck) whose saved config has no method (``model.backbone.prompt=None``) and whose meta names
the method merged: ``python tools/test.py CONFIG OUT.pth`` (and tools/infer.py) set
``model.backbone.prompt=None`` themselves, saying so; other loaders take that option.
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
    parser = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    parser.add_argument('config', help='the config the checkpoint was trained with (used '
                        'if the checkpoint saves no config of its own)')
    parser.add_argument('checkpoint', help='its checkpoint (tuned-only or full)')
    parser.add_argument('out', help='the merged model, an MMEngine checkpoint')
    parser.add_argument('--timm', metavar='BACKBONE.pth',
                        help='also the merged backbone in timm keys')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings (of the checkpoint\'s saved config, '
                        'or of CONFIG)')
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
