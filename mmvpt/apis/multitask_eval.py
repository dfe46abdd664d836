"""Testing several tasks' checkpoints on one frozen backbone, in batches that mix the tasks:
what ``tools/multitask_test.py`` runs.

Every task's test set is built as MMEngine's runner builds it for ``tools/test.py``, every
sample is preprocessed by its own task's data preprocessor (normalisation may differ per
task), the samples of all tasks are interleaved round-robin into batches that mix the tasks,
one :class:`~mmvpt.apis.MultiTaskModel` predicts them, and each task's predictions go to its
own evaluator: the metrics are those ``tools/test.py TEST_CONFIG CHECKPOINT`` gives for each
task.
"""
import os.path as osp
import time

TASK_FORMAT = 'NAME=CHECKPOINT:TEST_CONFIG'


class MultiTaskTestError(ValueError):
    """A task, file or test set that multi-task testing cannot use, said in one line."""


def parse_task(text):
    """``NAME=CHECKPOINT:TEST_CONFIG`` -> (name, checkpoint, test config); the checkpoint
    ends at the last ':', so it may hold ':' itself."""
    name, eq, rest = text.partition('=')
    checkpoint, colon, config = rest.rpartition(':')
    if not (eq and colon and name.strip() and checkpoint and config):
        raise MultiTaskTestError(
            f'--task {text!r}: expected {TASK_FORMAT} '
            '(e.g. dtd=work_dirs/dtd/epoch_100.pth:configs/cvpt/vit-b16_vtab-dtd.py)')
    return name.strip(), checkpoint, config


def check_tasks(config, tasks):
    """Fails naming the problem when the shared ``config`` or a task of ``tasks`` ([(name,
    checkpoint, test config)]) is missing, or a task name repeats."""
    if not tasks:
        raise MultiTaskTestError(f'no --task given: name each task as --task {TASK_FORMAT}')
    names = [name for name, _, _ in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MultiTaskTestError(f'--task: the name(s) {", ".join(repeated)} are given more '
                                 'than once')
    if not osp.isfile(config):
        raise MultiTaskTestError(f'{config}: no such config file')
    for name, checkpoint, test_config in tasks:
        if not osp.isfile(checkpoint):
            raise MultiTaskTestError(f'task {name!r}: {checkpoint}: no such checkpoint file')
        if not osp.isfile(test_config):
            raise MultiTaskTestError(f'task {name!r}: {test_config}: no such test config file')


class TaskTestSet:
    """One task's test set, preprocessor and evaluator, built as MMEngine's runner builds them
    for ``tools/test.py`` (the dataset's metainfo goes to the evaluator as in its TestLoop)."""

    def __init__(self, name, checkpoint, config_path, cfg, device):
        from mmengine.evaluator import Evaluator
        from mmengine.registry import EVALUATOR, MODELS
        from mmengine.runner import Runner
        self.name, self.checkpoint, self.config_path, self.cfg = name, checkpoint, config_path, cfg
        if cfg.get('default_scope') != 'mmpretrain':
            raise MultiTaskTestError(
                f'task {name!r}: {config_path} is not a classification config '
                f'(default_scope {cfg.get("default_scope")!r}, not \'mmpretrain\')')
        for key in ('test_dataloader', 'test_evaluator'):
            if cfg.get(key) is None:
                raise MultiTaskTestError(f'task {name!r}: {config_path} has no {key}')
        # As the runner does: the top-level data_preprocessor completes the model's.
        preprocessor = dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor')
                            or {})
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


def mixed_batches(test_sets, batch_size):
    """Batches of (task index, image, data sample) taking one sample of each task in turn
    (round robin) until every task's test set is used up."""
    streams = [(index, test_set.samples()) for index, test_set in enumerate(test_sets)]
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


def build_multitask_test(config, tasks, cfg_options=None, device=None):
    """(MultiTaskModel, [TaskTestSet], device) for the shared model ``config`` and ``tasks``
    ([(name, checkpoint, test config)]); ``cfg_options`` apply to every config."""
    import torch

    from mmvpt.utils.launch import prepare_config

    from .multitask import MultiTaskModel
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise MultiTaskTestError('--device cuda: no CUDA device is available here')
    shared = prepare_config(config, cfg_options)
    configs = {name: prepare_config(test_config, cfg_options) for name, _, test_config in tasks}
    model = MultiTaskModel(shared, {name: dict(checkpoint=checkpoint, config=configs[name])
                                    for name, checkpoint, _ in tasks}, device=device)
    test_sets = [TaskTestSet(name, checkpoint, test_config, configs[name], device)
                 for name, checkpoint, test_config in tasks]
    return model, test_sets, device


def _evaluate_mixed(model, test_sets, batch_size, device):
    """Runs every mixed batch and feeds each task's predictions to its evaluator; returns
    ({task: metrics}, seconds in the model, seconds in all, images)."""
    import torch
    images = 0
    model_seconds = 0.
    start_all = time.perf_counter()
    shape = None
    for batch in mixed_batches(test_sets, batch_size):
        indices, inputs, samples = zip(*batch)
        for index, image in zip(indices, inputs):
            if shape is None:
                shape = (test_sets[index].name, tuple(image.shape))
            elif tuple(image.shape) != shape[1]:
                raise MultiTaskTestError(
                    f'task {test_sets[index].name!r} gives images of shape {tuple(image.shape)}, '
                    f'task {shape[0]!r} of {shape[1]}: mixed batches need one input size (set '
                    'the test pipelines\' resize to one size)')
        inputs = torch.stack(inputs)
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = model.predict(inputs, list(indices), list(samples))
        if device == 'cuda':
            torch.cuda.synchronize()
        model_seconds += time.perf_counter() - start
        images += len(batch)
        for index, test_set in enumerate(test_sets):
            mine = [result for i, result in zip(indices, results) if i == index]
            if mine:
                test_set.evaluator.process(data_samples=mine)
                test_set.predictions.extend(prediction_record(result) for result in mine)
    metrics = {t.name: t.evaluator.evaluate(len(t.dataset)) for t in test_sets}
    return metrics, model_seconds, time.perf_counter() - start_all, images


def prediction_record(sample):
    """One image's prediction as plain data: img_path, sample_idx, gt_label, pred_label,
    pred_score."""
    record = dict(img_path=sample.get('img_path'), sample_idx=sample.get('sample_idx'))
    for key in ('gt_label', 'pred_label', 'pred_score'):
        value = sample.get(key)
        if value is not None:
            value = value.detach().cpu().tolist()
            record[key] = value[0] if key != 'pred_score' and len(value) == 1 else value
    return record


def evaluate_tasks(config, tasks, batch_size=32, device=None, cfg_options=None):
    """Tests every task of ``tasks`` ([(name, checkpoint, test config)]) through one
    MultiTaskModel of the shared ``config``, in mixed batches of ``batch_size``.

    Returns the results as plain data: config, batch_size, device, images, model_seconds /
    model_images_per_s (``MultiTaskModel.predict`` on preprocessed batches), total_seconds /
    total_images_per_s (with reading, decoding and preprocessing the images and the
    evaluators), and per task (in order) its checkpoint, test_config, images, metrics and
    per-image predictions in the test set's order. What MultiTaskModel and the configs
    refuse (a checkpoint of another method, backbone or method setting, a method that cannot
    be stacked, a config that cannot work) is a :class:`MultiTaskTestError`."""
    from mmvpt.models.utils import CheckpointMismatchError
    from mmvpt.utils.launch import ConfigError
    check_tasks(config, tasks)
    try:
        model, test_sets, device = build_multitask_test(config, tasks, cfg_options, device)
    except (FileNotFoundError, CheckpointMismatchError, ConfigError, ValueError,
            RuntimeError) as err:
        if isinstance(err, MultiTaskTestError):
            raise
        lines = (line.strip() for line in str(err).splitlines())
        raise MultiTaskTestError(' '.join(line for line in lines if line)) from None
    metrics, model_seconds, total_seconds, images = _evaluate_mixed(model, test_sets, batch_size,
                                                                   device)
    return dict(
        config=config, batch_size=batch_size, device=device, images=images,
        model_seconds=model_seconds, total_seconds=total_seconds,
        model_images_per_s=images / model_seconds if model_seconds else float('nan'),
        total_images_per_s=images / total_seconds if total_seconds else float('nan'),
        tasks={t.name: dict(checkpoint=t.checkpoint, test_config=t.config_path,
                            images=len(t.dataset), metrics=metrics[t.name],
                            predictions=t.predictions)
               for t in test_sets})
