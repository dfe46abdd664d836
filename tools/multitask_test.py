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
preprocessing the images and the evaluators).
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
from mmengine.config import DictAction  # noqa: E402

TASK_FORMAT = 'NAME=CHECKPOINT:TEST_CONFIG'


class UsageError(Exception):
    """A problem with the command line or its files: printed as one line, exit status 1."""


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


def parse_task(text):
    """``NAME=CHECKPOINT:TEST_CONFIG`` -> (name, checkpoint, test config); the checkpoint
    ends at the last ':', so it may hold ':' itself."""
    name, eq, rest = text.partition('=')
    checkpoint, colon, config = rest.rpartition(':')
    if not (eq and colon and name.strip() and checkpoint and config):
        raise UsageError(f'--task {text!r}: expected {TASK_FORMAT} '
                         '(e.g. dtd=work_dirs/dtd/epoch_100.pth:configs/cvpt/vit-b16_vtab-dtd.py)')
    return name.strip(), checkpoint, config


def check_args(args):
    """Everything that needs no import of torch: task specs, files, numbers."""
    if not args.task:
        raise UsageError(f'no --task given: name each task as --task {TASK_FORMAT}')
    tasks = [parse_task(text) for text in args.task]
    names = [name for name, _, _ in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f'--task: the name(s) {", ".join(repeated)} are given more than once')
    if not osp.isfile(args.config):
        raise UsageError(f'{args.config}: no such config file')
    for name, checkpoint, config in tasks:
        if not osp.isfile(checkpoint):
            raise UsageError(f'task {name!r}: {checkpoint}: no such checkpoint file')
        if not osp.isfile(config):
            raise UsageError(f'task {name!r}: {config}: no such test config file')
    if args.batch_size < 1:
        raise UsageError('--batch-size: at least 1')
    if args.out and osp.isdir(args.out):
        raise UsageError(f'--out {args.out}: is a folder; give a file name (results.json)')
    return tasks


class Task:
    """One task's test set, preprocessor and evaluator, built as MMEngine's runner builds them
    for ``tools/test.py`` (the dataset's metainfo goes to the evaluator as in its TestLoop)."""

    def __init__(self, name, checkpoint, config_path, cfg, device):
        from mmengine.evaluator import Evaluator
        from mmengine.registry import EVALUATOR, MODELS
        from mmengine.runner import Runner
        self.name, self.checkpoint, self.config_path, self.cfg = name, checkpoint, config_path, cfg
        if cfg.get('default_scope') != 'mmpretrain':
            raise UsageError(f'task {name!r}: {config_path} is not a classification config '
                             f'(default_scope {cfg.get("default_scope")!r}, not \'mmpretrain\')')
        for key in ('test_dataloader', 'test_evaluator'):
            if cfg.get(key) is None:
                raise UsageError(f'task {name!r}: {config_path} has no {key}')
        # As the runner does: the top-level data_preprocessor completes the model's.
        preprocessor = dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {})
        preprocessor.setdefault('type', 'mmpretrain.ClsDataPreprocessor')
        self.preprocessor = MODELS.build(preprocessor).to(device).eval()
        self.loader = Runner.build_dataloader(cfg.test_dataloader)
        evaluator = cfg.test_evaluator
        if isinstance(evaluator, Evaluator):
            self.evaluator = evaluator
        elif isinstance(evaluator, dict) and 'metrics' in evaluator:
            self.evaluator = EVALUATOR.build(dict(dict(type='Evaluator'), **evaluator))
        else:
            self.evaluator = EVALUATOR.build(dict(type='Evaluator', metrics=evaluator))
        self.dataset = self.loader.dataset
        if hasattr(self.dataset, 'metainfo'):
            self.evaluator.dataset_meta = self.dataset.metainfo
        self.predictions = []
        self.preprocess_seconds = 0.

    def samples(self):
        """(preprocessed image, data sample) of every test image, in the dataset's order."""
        for data in self.loader:
            start = time.perf_counter()
            data = self.preprocessor(data, False)
            self.preprocess_seconds += time.perf_counter() - start
            yield from zip(data['inputs'], data['data_samples'])


def mixed_batches(tasks, batch_size):
    """Batches of (task index, image, data sample) taking one sample of each task in turn
    (round robin) until every task's test set is used up."""
    streams = [(index, task.samples()) for index, task in enumerate(tasks)]
    batch = []
    while streams:
        for stream in list(streams):
            item = next(stream[1], None)
            if item is None:
                streams.remove(stream)
                continue
            batch.append((stream[0], *item))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def build(args, task_specs):
    import torch

    from mmvpt.apis import MultiTaskModel, prepare_config
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda: no CUDA device is available here')
    shared = prepare_config(args.config, args.cfg_options)
    configs = {name: prepare_config(config, args.cfg_options) for name, _, config in task_specs}
    model = MultiTaskModel(shared, {name: dict(checkpoint=checkpoint, config=configs[name])
                                    for name, checkpoint, _ in task_specs}, device=device)
    tasks = [Task(name, checkpoint, config, configs[name], device)
             for name, checkpoint, config in task_specs]
    return model, tasks, device


def evaluate(model, tasks, batch_size, device):
    """Runs every mixed batch and feeds each task's predictions to its evaluator; returns
    ({task: metrics}, seconds in the model, seconds in all, images)."""
    import torch
    images = 0
    model_seconds = 0.
    start_all = time.perf_counter()
    shape = None
    for batch in mixed_batches(tasks, batch_size):
        indices, inputs, samples = zip(*batch)
        for index, image in zip(indices, inputs):
            if shape is None:
                shape = (tasks[index].name, tuple(image.shape))
            elif tuple(image.shape) != shape[1]:
                raise UsageError(f'task {tasks[index].name!r} gives images of shape '
                                 f'{tuple(image.shape)}, task {shape[0]!r} of {shape[1]}: mixed '
                                 'batches need one input size (set the test pipelines\' resize '
                                 'to one size)')
        inputs = torch.stack(inputs)
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = model.predict(inputs, list(indices), list(samples))
        if device == 'cuda':
            torch.cuda.synchronize()
        model_seconds += time.perf_counter() - start
        images += len(batch)
        for index, task in enumerate(tasks):
            mine = [result for i, result in zip(indices, results) if i == index]
            if mine:
                task.evaluator.process(data_samples=mine)
                task.predictions.extend(prediction_record(result) for result in mine)
    metrics = {task.name: task.evaluator.evaluate(len(task.dataset)) for task in tasks}
    return metrics, model_seconds, time.perf_counter() - start_all, images


def prediction_record(sample):
    record = dict(img_path=sample.get('img_path'), sample_idx=sample.get('sample_idx'))
    for key in ('gt_label', 'pred_label', 'pred_score'):
        value = sample.get(key)
        if value is not None:
            value = value.detach().cpu().tolist()
            record[key] = value[0] if key != 'pred_score' and len(value) == 1 else value
    return record


def _plain(value):
    """JSON for metric values that are tensors or numpy arrays."""
    return value.tolist() if hasattr(value, 'tolist') else str(value)


def _value(value):
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def report(tasks, metrics, model_seconds, total_seconds, images, args, device):
    keys = sorted({key for task_metrics in metrics.values() for key in task_metrics})
    print(f'\n{len(tasks)} tasks on one backbone, mixed batches of {args.batch_size}, {device}')
    print('| task | images | ' + ' | '.join(keys) + ' | checkpoint |')
    print('|---|---:|' + '---:|' * len(keys) + '---|')
    for task in tasks:
        values = [_value(metrics[task.name].get(key, '')) for key in keys]
        print(f'| {task.name} | {len(task.dataset)} | ' + ' | '.join(values) + f' | {task.checkpoint} |')
    model_rate = images / model_seconds if model_seconds else float('nan')
    total_rate = images / total_seconds if total_seconds else float('nan')
    print(f'throughput: {model_rate:.1f} images/s in the model (MultiTaskModel.predict on '
          f'preprocessed batches), {total_rate:.1f} images/s end to end (with loading, '
          f'preprocessing and evaluation); {images} images')
    if args.out:
        from mmvpt.utils.atomic_io import atomic_write
        result = dict(
            config=args.config, batch_size=args.batch_size, device=device, images=images,
            model_seconds=model_seconds, total_seconds=total_seconds,
            model_images_per_s=model_rate, total_images_per_s=total_rate,
            tasks={task.name: dict(checkpoint=task.checkpoint, test_config=task.config_path,
                                   metrics=metrics[task.name], predictions=task.predictions)
                   for task in tasks})
        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        atomic_write(args.out, json.dumps(result, indent=1, default=_plain))
        print(f'results in {args.out}')


def main(argv=None):
    args = parse_args(argv)
    try:
        task_specs = check_args(args)
        from mmvpt.apis import ConfigError
        from mmvpt.models.utils import CheckpointMismatchError
        try:
            model, tasks, device = build(args, task_specs)
        # What MultiTaskModel and the configs refuse: a checkpoint of another method, backbone
        # or method setting; a method that cannot be stacked (CVPT's own cross-attention,
        # VPT's projection); a config that cannot work.
        except (FileNotFoundError, CheckpointMismatchError, ConfigError, ValueError,
                RuntimeError) as err:
            lines = (line.strip() for line in str(err).splitlines())
            raise UsageError(' '.join(line for line in lines if line)) from None
        metrics, model_seconds, total_seconds, images = evaluate(model, tasks, args.batch_size, device)
    except UsageError as err:
        sys.exit(f'mmvpt: {err}')
    report(tasks, metrics, model_seconds, total_seconds, images, args, device)
    return metrics


if __name__ == '__main__':
    main()
