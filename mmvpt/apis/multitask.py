"""One frozen backbone, many tasks: several tuned-only checkpoints of one method served in one
batch, each sample with its own task's prompts and head."""
import inspect
import logging
import os.path as osp

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODELS, init_default_scope

from mmvpt.models.backbones.base import PromptedBackbone
from mmvpt.models.utils.vit_checkpoint import CheckpointMismatchError
from mmvpt.registry import MODELS as MMVPT_MODELS
from mmvpt.utils.tuned_checkpoint import load_tuned_checkpoint, saved_prompts

PROMPT_PREFIX = 'backbone.prompt.'
# Options that do not change what a method computes in eval mode.
EVAL_NEUTRAL_OPTIONS = ('dropout', 'dropout_mode')


class MultiTaskModel(nn.Module):
    """Serves N tasks' checkpoints (same backbone, same prompt method) on one frozen
    backbone: ``model(images, tasks)`` runs one forward in which every sample uses its own
    task's prompts, key-value prompts, masks and head.

    The tasks' tuned tensors are stacked with a leading task axis in a copy of the method
    (:meth:`~mmvpt.models.prompts.base.PromptMethod.stacked`); the backbone's own forward
    takes the per-sample task index. Work that depends on the task only (prompt keys and
    values, CVPT's folded prompt products, iVPT's mixing) is done once per task and
    gathered per sample; heads run per task on that task's samples.

    Args:
        config_or_backbone: the shared model: a classification config (file or
            :class:`~mmengine.config.Config`; its backbone, with ``init_cfg`` naming the
            pretrained weights, and its neck are used), or a built
            :class:`~mmvpt.models.backbones.base.PromptedBackbone` whose weights are in place.
        checkpoints: ``{task name: checkpoint}`` or ``{task name: dict(checkpoint=...,
            config=...)}``; a task's head is built from the given config, else from the config
            saved in the checkpoint, else from the shared config with the checkpoint's class
            count.
        device: where to run (default: the backbone's device).
    """

    def __init__(self, config_or_backbone, checkpoints, device=None):
        super().__init__()
        if not checkpoints:
            raise ValueError('MultiTaskModel needs at least one task checkpoint')
        self.cfg = None
        self.neck = None
        self.data_preprocessor = None
        if isinstance(config_or_backbone, PromptedBackbone):
            self.backbone = config_or_backbone
        else:
            self.cfg = _load_config(config_or_backbone)
            model_cfg = self.cfg.model.copy()
            if 'data_preprocessor' in self.cfg:  # where the runner takes it from, too
                model_cfg.setdefault('data_preprocessor', self.cfg.data_preprocessor)
            model = _build_classifier(model_cfg, self.cfg.filename)
            self.backbone, self.neck = model.backbone, model.neck
            self.data_preprocessor = model.data_preprocessor
        self.method = self.backbone.prompt
        loaded = {name: _load_task(name, spec) for name, spec in checkpoints.items()}
        self._put_backbone_in_place(loaded)
        self.task_names = list(loaded)
        self.heads = nn.ModuleDict()
        self.classes = {}
        tuned = {}
        for name, task in loaded.items():
            self._check_task(name, task)
            self.heads[name] = self._build_head(name, task)
            self.classes[name] = task['meta'].get('dataset_meta', {}).get('classes')
            tuned[name] = {k[len(PROMPT_PREFIX):]: v for k, v in task['state'].items()
                           if k.startswith(PROMPT_PREFIX)}
        if self.method is not None:
            self.method = self.backbone.prompt = self.method.stacked(tuned)
        self.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    # -- building ------------------------------------------------------------------------
    def _put_backbone_in_place(self, loaded):
        backbone = self.backbone
        if backbone.backbone_ready:
            return
        if backbone.pretrained_checkpoint is not None:
            backbone.init_weights()
            return
        # No init_cfg: a full checkpoint brings the frozen weights.
        for task in loaded.values():
            frozen = _frozen_part(task['state'])
            if frozen:
                backbone.load_state_dict(
                    {k[len('backbone.'):]: v for k, v in frozen.items()}, strict=False)
                backbone.backbone_ready = True
                return
        raise RuntimeError('MultiTaskModel: the tasks\' checkpoints hold only tuned tensors and '
                           'the backbone has no pretrained checkpoint: set '
                           'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint=PATH) '
                           'in the config')

    def _check_task(self, name, task):
        """Fails, naming the task and its file, for a checkpoint of another method, backbone
        or method setting."""
        source = f'task {name!r} ({task["path"]})'
        expected = {} if self.method is None else {'backbone.prompt': type(self.method).__name__}
        saved = saved_prompts(task['meta'])
        has_prompts = any(k.startswith(PROMPT_PREFIX) for k in task['state'])
        if (saved is not None and saved != expected
                or saved is None and has_prompts != bool(expected)):
            found = (saved if saved is not None
                     else 'prompt tensors' if has_prompts else 'no prompts')
            raise CheckpointMismatchError(f'{source} was tuned with {found}, but the shared model '
                                          f'runs {expected or "no prompt method"}')
        task_cfg = task['cfg']
        if task_cfg is not None and self.cfg is not None:
            ours, theirs = self.cfg.model.backbone, task_cfg.get('model', {}).get('backbone', {})
            for key in ('type', 'arch', 'arch_cfg', 'frozen'):
                if _plain(ours.get(key)) != _plain(theirs.get(key)):
                    raise CheckpointMismatchError(
                        f'{source} was tuned on backbone {key}={theirs.get(key)!r}, the shared '
                        f'model has {ours.get(key)!r}')
            ours, theirs = (_method_settings(c.get('prompt')) for c in (ours, theirs))
            for key in sorted(set(ours) | set(theirs)):
                if key not in EVAL_NEUTRAL_OPTIONS and ours.get(key) != theirs.get(key):
                    raise CheckpointMismatchError(
                        f'{source} was tuned with prompt {key}={theirs.get(key)!r}, the shared '
                        f'model has {key}={ours.get(key)!r}; tasks stack only with one method '
                        'setting')
        own = self.backbone.state_dict()
        for key, value in _frozen_part(task['state']).items():
            mine = own.get(key[len('backbone.'):])
            if mine is None or mine.shape != value.shape or not torch.equal(mine, value.to(mine)):
                raise CheckpointMismatchError(
                    f'{source} brings backbone weights that differ from the shared frozen backbone '
                    f'({key}): it was fully fine-tuned or tuned on other pretrained weights')
        tuned_neck = [k for k in task['state'] if k.startswith('neck.')]
        if tuned_neck:
            raise CheckpointMismatchError(f'{source} tunes the neck ({tuned_neck[0]}); only '
                                          'prompts and heads can be per task')
        recorded = getattr(task['state'], '_metadata', {}).get('backbone', {}).get('pretrained')
        ours = self.backbone.pretrained_checkpoint
        if recorded and ours and osp.realpath(recorded) != osp.realpath(ours):
            print_log(f'MultiTaskModel: {source} was tuned on {recorded}; the shared backbone is '
                      f'{ours}', logger='current', level=logging.WARNING)

    def _build_head(self, name, task):
        head_state = {k[len('head.'):]: v for k, v in task['state'].items()
                      if k.startswith('head.')}
        if task['cfg'] is not None and 'model' in task['cfg']:
            head_cfg = task['cfg'].model.head
        elif self.cfg is not None:
            head_cfg = self.cfg.model.head.copy()
            if 'fc.weight' in head_state and 'num_classes' in head_cfg:
                head_cfg['num_classes'] = head_state['fc.weight'].shape[0]
        else:
            raise ValueError(f'task {name!r} ({task["path"]}): no config saved in the checkpoint; '
                             'give dict(checkpoint=..., config=...) for it')
        head = MODELS.build(head_cfg)
        try:
            head.load_state_dict(head_state)
        except RuntimeError as err:
            raise CheckpointMismatchError(f'task {name!r} ({task["path"]}): its head does not fit '
                                          f'the head config: {err}') from None
        return head

    # -- running -------------------------------------------------------------------------
    def task_index(self, tasks, batch_size=None):
        """(B,) long tensor of task indices from names or indices (one per sample)."""
        if torch.is_tensor(tasks):
            index = tasks.long()
        else:
            tasks = list(tasks)
            unknown = sorted({str(t) for t in tasks
                              if isinstance(t, str) and t not in self.task_names})
            if unknown:
                raise KeyError(f'unknown task(s) {unknown}; this model serves {self.task_names}')
            index = torch.tensor([self.task_names.index(t) if isinstance(t, str) else int(t)
                                  for t in tasks], dtype=torch.long)
        if index.numel() and not (0 <= int(index.min())
                                  and int(index.max()) < len(self.task_names)):
            raise IndexError(f'task indices must be in [0, {len(self.task_names)})')
        if batch_size is not None and index.numel() != batch_size:
            raise ValueError(f'{index.numel()} tasks for a batch of {batch_size}: name one per '
                             'sample')
        return index.to(self.device)

    @property
    def device(self):
        return next(self.backbone.parameters()).device

    def features(self, images, tasks):
        """The backbone's (and neck's) outputs for ``images`` (B, 3, H, W), preprocessed as
        the tasks' configs do, each sample with its task's prompts."""
        index = self.task_index(tasks, images.shape[0])
        feats = self.backbone(images, tasks=index if self.method is not None else None)
        return (self.neck(feats) if self.neck is not None else feats), index

    @torch.no_grad()
    def forward(self, images, tasks):
        """Each sample's class scores (logits) from its task's head, in input order: a list
        (tasks may have different class counts)."""
        feats, index = self.features(images, tasks)
        scores = [None] * images.shape[0]
        for rows, head in self._groups(index):
            for row, score in zip(rows.tolist(), head(tuple(f[rows] for f in feats))):
                scores[row] = score
        return scores

    @torch.no_grad()
    def predict(self, images, tasks, data_samples=None):
        """mmpretrain ``DataSample`` predictions (scores, labels) in input order, each from
        its task's head (``head.predict``)."""
        feats, index = self.features(images, tasks)
        results = [None] * images.shape[0]
        for rows, head in self._groups(index):
            samples = None if data_samples is None else [data_samples[r] for r in rows.tolist()]
            predictions = head.predict(tuple(f[rows] for f in feats), samples)
            for row, sample in zip(rows.tolist(), predictions):
                results[row] = sample
        return results

    def _groups(self, index):
        """(rows of the batch, head) per task present in it."""
        for task, name in enumerate(self.task_names):
            rows = (index == task).nonzero().flatten()
            if rows.numel():
                yield rows, self.heads[name]

    def train(self, mode=True):
        if mode:
            raise RuntimeError('MultiTaskModel serves tuned checkpoints (eval only); train each '
                               'task with its own config')
        return super().train(False)


def _load_config(config):
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return cfg


def _build_classifier(model_cfg, source):
    model = MODELS.build(model_cfg)
    if (not isinstance(getattr(model, 'backbone', None), PromptedBackbone)
            or not hasattr(model, 'head')):
        raise ValueError(f'{source}: MultiTaskModel serves classifiers on an mmvpt prompted '
                         'backbone (model.backbone.type mmvpt.PromptedViT / mmvpt.PromptedSwin, '
                         'a head); '
                         f'got {type(model).__name__}')
    return model


def _load_task(name, spec):
    spec = spec if isinstance(spec, dict) else dict(checkpoint=spec)
    path = spec['checkpoint']
    if not osp.isfile(path):
        raise FileNotFoundError(f'task {name!r}: checkpoint {path} does not exist')
    state, meta = load_tuned_checkpoint(path)
    cfg = spec.get('config')
    if cfg is not None:
        cfg = cfg if isinstance(cfg, Config) else Config.fromfile(cfg)
    elif isinstance(meta.get('cfg'), str):
        try:
            cfg = Config.fromstring(meta['cfg'], file_format='.py')
        except Exception as err:  # an old or hand-made checkpoint: shapes are still checked
            print_log(f'MultiTaskModel: task {name!r}: the config saved in {path} does not parse '
                      f'({err}); checking tensor shapes only', logger='current',
                      level=logging.WARNING)
    return dict(path=path, state=state, meta=meta, cfg=cfg)


def _frozen_part(state):
    return {k: v for k, v in state.items()
            if k.startswith('backbone.') and not k.startswith(PROMPT_PREFIX)}


def _method_settings(prompt_cfg):
    """A prompt config as the method builds it: its class name and every option, defaults
    filled in and spelled as the method keeps them (so ``insert=3`` spelled out equals it left
    to the default, ``'after_attn'``)."""
    if not prompt_cfg:
        return {}
    options = _plain(prompt_cfg)
    name = str(options.pop('type')).split('.')[-1]
    method = MMVPT_MODELS.get(name)
    if method is None:
        return dict(type=name, **options)
    settings = {key: param.default for key, param in inspect.signature(method).parameters.items()
                if param.default is not inspect.Parameter.empty}
    settings.update(options)
    return dict(type=method.__name__, **method.canonical_options(settings))


def _plain(value):
    """Config values as plain dicts / lists, for comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
