"""Test a checkpoint with an mmpretrain or mmseg config (picked by its default_scope).

    python tools/test.py CONFIG CHECKPOINT [--tta] [--work-dir DIR] [--out FILE]
                                           [--cfg-options k=v ...] [--launcher ...]

``--tta`` runs the config's test-time augmentation: multi-scale + flip for segmentation
(the config's ``tta_model`` / ``tta_pipeline``), flip averaging for classification.
"""
import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
from mmengine.config import DictAction  # noqa: E402

from mmvpt.apis import (ConfigError, finish_distributed, init_distributed,  # noqa: E402
                        prepare_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a prompt-tuned model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation '
                        '(segmentation: multi-scale + flip)')
    parser.add_argument('--out', help='classification: a pickle file for the predictions; '
                        'segmentation: a folder for the predicted label PNGs')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _classification_tta(cfg):
    """Flip averaging, for classification configs that bring no TTA of their own."""
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        test_pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
        *loading, pack = test_pipeline
        flips = [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                 dict(type='RandomFlip', prob=1.0, direction='horizontal')]
        cfg.tta_pipeline = loading + [dict(type='TestTimeAug', transforms=[flips, [pack]])]


def apply_tta(cfg, host):
    if host == 'mmpretrain':
        _classification_tta(cfg)
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ConfigError(f'--tta: {cfg.filename} defines no {" / ".join(missing)}')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = prepare_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    if args.tta:
        apply_tta(cfg, cfg.default_scope)
    if args.out:
        if cfg.default_scope == 'mmseg':
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        else:
            evaluators = cfg.test_evaluator
            evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
            cfg.test_evaluator = evaluators + [dict(type='DumpResults', out_file_path=args.out)]

    init_distributed(args.launcher)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    metrics = runner.test()
    finish_distributed()
    return metrics


if __name__ == '__main__':
    main()
