"""Train an mmpretrain or mmseg config (picked by its default_scope) with MMEngine's runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--compile [BACKEND]]
                                 [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmengine.config import DictAction  # noqa: E402

from mmvpt.utils import (  # noqa: E402
    add_training_hooks,
    enable_amp,
    finish_distributed,
    init_distributed,
    prepare_config,
    run_cli,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a prompt-tuned model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or from the latest one in the work dir if no '
        'path is given')
    parser.add_argument(
        '--amp', action='store_true',
        help='automatic mixed precision: float16 on GPU (AmpOptimWrapper), bfloat16 on CPU')
    parser.add_argument(
        '--compile', nargs='?', const='inductor', metavar='BACKEND',
        help="torch.compile the train step (MMEngine's compile option; default backend: "
        'inductor). The first iterations are slow while it compiles')
    parser.add_argument('--no-validate', action='store_true',
                        help='skip validation during training')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs, e.g. model.backbone.prompt.num_tokens=50')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(f'--resume {args.resume!r}: no such checkpoint file')
        cfg.resume, cfg.load_from = True, args.resume
    if args.amp:  # GPU: float16 with loss scaling; CPU: bfloat16
        enable_amp(cfg)
    if args.compile:
        cfg.compile = dict(backend=args.compile)
    add_training_hooks(cfg)
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None

    init_distributed(args.launcher)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    finish_distributed()


if __name__ == '__main__':
    run_cli(main)
