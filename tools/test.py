"""Test a checkpoint with an mmpretrain or mmseg config (picked by its default_scope).

    python tools/test.py CONFIG CHECKPOINT [--tta] [--merge] [--work-dir DIR] [--out FILE]
                                           [--cfg-options k=v ...] [--launcher ...]

``--tta`` runs the config's test-time augmentation: multi-scale + flip for segmentation
(the config's ``tta_model`` / ``tta_pipeline``), flip averaging for classification.
``--merge`` folds a LoRA / SSF / BitFit method into the frozen weights before testing
(the deployed model's cost; ``tools/misc/merge_method.py`` writes such a checkpoint, which
the method's config then tests as it is: ``model.backbone.prompt=None`` is set, and said).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmengine.config import DictAction  # noqa: E402

from mmvpt.utils import (  # noqa: E402
    add_frozen_init_hook,
    add_test_output,
    apply_tta,
    finish_distributed,
    init_distributed,
    prepare_config,
    run_cli,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a prompt-tuned model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation '
                        '(segmentation: multi-scale + flip)')
    parser.add_argument('--merge', action='store_true', help='fold the method (LoRA, SSF, '
                        'BitFit) into the frozen weights before testing')
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


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = prepare_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    from mmvpt.utils.tuned_checkpoint import fit_config_to_merged
    fit_config_to_merged(cfg, args.checkpoint)  # merge_method.py's: the model without its method
    add_frozen_init_hook(cfg)
    if args.tta:
        apply_tta(cfg)
    if args.out:
        add_test_output(cfg, args.out)
    if args.merge:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type='mmvpt.MergeMethodHook')]

    init_distributed(args.launcher)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    metrics = runner.test()
    finish_distributed()
    return metrics


if __name__ == '__main__':
    run_cli(main)
