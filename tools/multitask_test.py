"""Test several tasks' checkpoints on one frozen backbone, in batches that mix the tasks.

    python tools/multitask_test.py CONFIG --task NAME=CHECKPOINT:TEST_CONFIG [--task ...]
        [--batch-size 32] [--device cpu|cuda] [--cfg-options k=v ...] [--out results.json]

CONFIG is the shared model (its backbone, with ``init_cfg`` naming the pretrained weights,
and its prompt method and settings). Each ``--task`` names a tuned checkpoint of that model
and the task's own test config: its ``test_dataloader`` (dataset and pipeline),
``test_evaluator``, ``data_preprocessor`` and ``model.head``. All tasks run through one
:class:`mmvpt.apis.MultiTaskModel`: each task's test set is built as MMEngine's runner
builds it, every sample is preprocessed by its own task's data preprocessor (normalisation
may differ per task), the samples of all tasks are interleaved round-robin into batches of
``--batch-size`` that mix the tasks, and each task's predictions go to its own evaluator. The
metrics are those ``tools/test.py TEST_CONFIG CHECKPOINT`` prints for each task.

The checkpoint and the test config are split at the LAST ':' of the value, so a checkpoint
path may contain ':' (``run:2024-05-01/epoch_100.pth``); the test config's path may not.
``--cfg-options`` apply to CONFIG and to every test config. ``--out`` writes a JSON file with
each task's metrics and per-image predictions (``pred_score``, ``pred_label``, ``gt_label``,
``img_path``, in the test set's order) and the throughput.

Throughput is printed twice: of the model (``MultiTaskModel.predict`` on preprocessed
batches: the backbone and the heads) and end to end (with reading, decoding and
preprocessing the images and the evaluators). The testing itself is
:func:`mmvpt.apis.multitask_eval.evaluate_tasks`; this script parses the command line,
prints and writes ``--out``.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmengine.config import DictAction  # noqa: E402

from mmvpt.apis.multitask_eval import TASK_FORMAT, MultiTaskTestError, evaluate_tasks, parse_task  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test several tasks\' tuned checkpoints on one frozen backbone, in '
        'batches that mix the tasks')
    parser.add_argument('config',
                        help='the shared model config (backbone, init_cfg, prompt method)')
    parser.add_argument('--task', action='append', default=[], metavar=TASK_FORMAT,
                        help='a task: its name, its tuned checkpoint and its test config '
                        '(split at the last ":"); repeat for every task')
    parser.add_argument('--batch-size', type=int, default=32,
                        help='images per mixed batch (default 32)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default=None,
                        help='default: cuda where there is one')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of CONFIG and of every test config, '
                        'key=value pairs')
    parser.add_argument('--out', help='a JSON file for the metrics and per-image predictions')
    return parser.parse_args(argv)


def check_args(args):
    """The command line's numbers and output file; the tasks as (name, checkpoint, config)."""
    tasks = [parse_task(text) for text in args.task]
    if args.batch_size < 1:
        raise MultiTaskTestError('--batch-size: at least 1')
    if args.out and osp.isdir(args.out):
        raise MultiTaskTestError(f'--out {args.out}: is a folder; give a file name (results.json)')
    return tasks


def _plain(value):
    """JSON for metric values that are tensors or numpy arrays."""
    return value.tolist() if hasattr(value, 'tolist') else str(value)


def _value(value):
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def report(result):
    tasks = result['tasks']
    keys = sorted({key for task in tasks.values() for key in task['metrics']})
    print(f'\n{len(tasks)} tasks on one backbone, mixed batches of {result["batch_size"]}, '
          f'{result["device"]}')
    print('| task | images | ' + ' | '.join(keys) + ' | checkpoint |')
    print('|---|---:|' + '---:|' * len(keys) + '---|')
    for name, task in tasks.items():
        values = [_value(task['metrics'].get(key, '')) for key in keys]
        print(f'| {name} | {task["images"]} | ' + ' | '.join(values) + f' | {task["checkpoint"]} |')
    print(f'throughput: {result["model_images_per_s"]:.1f} images/s in the model '
          '(MultiTaskModel.predict on preprocessed batches), '
          f'{result["total_images_per_s"]:.1f} images/s end to end (with loading, '
          f'preprocessing and evaluation); {result["images"]} images')


def main(argv=None):
    args = parse_args(argv)
    try:
        tasks = check_args(args)
        result = evaluate_tasks(args.config, tasks, args.batch_size, args.device, args.cfg_options)
    except MultiTaskTestError as err:
        sys.exit(f'mmvpt: {err}')
    report(result)
    if args.out:
        from mmvpt.utils.atomic_io import atomic_write
        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        atomic_write(args.out, json.dumps(result, indent=1, default=_plain))
        print(f'results in {args.out}')
    return {name: task['metrics'] for name, task in result['tasks'].items()}


if __name__ == '__main__':
    main()
