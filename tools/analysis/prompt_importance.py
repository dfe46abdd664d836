"""E²VPT's importance scores of a trained checkpoint, as the official pruning protocol takes
them before its rewind runs.

    python tools/analysis/prompt_importance.py CONFIG CHECKPOINT --out FILE [--max-batches N]
        [--work-dir DIR] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Builds MMEngine's runner of CONFIG, loads CHECKPOINT (tuned-only checkpoints go on the
config's pretrained backbone, as in ``tools/test.py``) and takes one pass over the config's
training dataloader (its split: the config's, or ``--cfg-options``), averaging the signed
gradient of the loss wrt the token and piece gates (``E2VPT(learn_masks=True)``; without them,
wrt the masks): :func:`mmvpt.engine.e2vpt_pruning.importance_scores`. Writes FILE as JSON
(``token_scores`` (P,), ``piece_scores`` (P, R), ``batches``, ``num_tokens``, ``num_pieces``,
``segment_layout``, ``checkpoint``, ``config``), which ``mmvpt.PromptMaskHook`` reads.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmengine.config import DictAction  # noqa: E402

from mmvpt.utils import finish_distributed, init_distributed, prepare_config, run_cli  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="E2VPT's prompt importance scores of a checkpoint")
    parser.add_argument('config', help='config file path (its model has an mmvpt.E2VPT)')
    parser.add_argument('checkpoint', help='checkpoint file (the run before pruning)')
    parser.add_argument('--out', required=True, help='the JSON file to write')
    parser.add_argument('--max-batches', type=int, help='score on at most this many batches '
                        '(default: one pass over the training data)')
    parser.add_argument('--work-dir',
                        help='the dir for the log (default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error(f'--max-batches {args.max_batches}: must be positive')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = prepare_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    init_distributed(args.launcher)

    from mmengine.dist import is_main_process

    from mmvpt.engine.e2vpt_pruning import score_checkpoint
    from mmvpt.utils.atomic_io import atomic_write
    payload = score_checkpoint(cfg, args.checkpoint, args.max_batches)
    if is_main_process():
        atomic_write(args.out, json.dumps(payload, indent=1))
        print(f'{args.out}: scores of {payload["num_tokens"]} prompts x {payload["num_pieces"]} '
              f'pieces over {payload["batches"]} batches')
    finish_distributed()
    return payload


if __name__ == '__main__':
    run_cli(main)
