"""Dataset checks that name bad data before training or testing starts: sample files that
are missing or empty, segmentation images without annotations (and annotations without
images), and a ``num_classes`` in the config smaller than the data's labels.

The checks stat files and read data infos only: no image is decoded and no random number is
drawn. mmvpt's list-file datasets already stat their files when they load
(:class:`mmvpt.datasets.SampleSourceMixin`, with the helpers of ``mmvpt.utils.data_errors``);
this module imports neither mmpretrain nor mmseg.
"""
import os
import os.path as osp
import sys

import numpy as np
from mmengine.dataset import ClassBalancedDataset, RepeatDataset
from mmengine.hooks import Hook
from torch.utils.data import ConcatDataset

from mmvpt.registry import HOOKS
from mmvpt.utils.data_errors import SAMPLE_SOURCE_KEY, raise_data_error, sample_file_problems


def leaf_datasets(dataset):
    """The datasets inside ``dataset``'s wrappers (ConcatDataset, RepeatDataset,
    ClassBalancedDataset, and any other holding a ``.dataset``)."""
    if isinstance(dataset, ConcatDataset):
        return [leaf for inner in dataset.datasets for leaf in leaf_datasets(inner)]
    inner = getattr(dataset, 'dataset', None)
    if isinstance(dataset, (RepeatDataset, ClassBalancedDataset)) or (
            inner is not None and hasattr(inner, '__getitem__') and hasattr(inner, '__len__')):
        return leaf_datasets(inner)
    return [dataset]


def describe(dataset):
    """``ClassName (annotation file or data root)``, to say which dataset a message means."""
    location = getattr(dataset, 'ann_file', None) or getattr(dataset, 'data_root', None)
    return f'{type(dataset).__name__} ({location})' if location else type(dataset).__name__


def is_segmentation_dataset(dataset):
    # mmseg is imported only when a config uses it; without it no dataset can be mmseg's.
    if 'mmseg' not in sys.modules:
        return False
    from mmseg.datasets import BaseSegDataset
    return isinstance(dataset, BaseSegDataset)


def largest_label(label):
    """The largest class index in a ``gt_label`` (an int or, multi-label, a sequence), or
    ``None`` when it has none."""
    if label is None:
        return None
    values = np.asarray(label).reshape(-1)
    return int(values.max()) if values.size else None


def scan_dataset(dataset, split):
    """One pass over ``dataset``'s data infos: stats the files of samples that mmvpt's
    datasets have not checked yet and finds the largest ``gt_label``.

    Returns ``(problems, largest, where)``: file problems (messages), the largest label
    (``None`` without labels) and where it is first found.
    """
    if not getattr(dataset, '_fully_initialized', True):
        dataset.full_init()  # as the data loader would
    problems, largest, where_largest = [], None, None
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        where = info.get(SAMPLE_SOURCE_KEY)
        if where is None:  # a dataset other than mmvpt's: its files are not checked yet
            where = f'{split} dataset {describe(dataset)}, sample {index}'
            problems += sample_file_problems(info, where)
        label = largest_label(info.get('gt_label'))
        if label is not None and (largest is None or label > largest):
            largest = label
            where_largest = f'{where} ({info["img_path"]})' if 'img_path' in info else where
    return problems, largest, where_largest


def unpaired_annotations(dataset):
    """Messages for annotation files (``seg_map_suffix``) under an mmseg dataset's annotation
    folder that have no image, when the dataset lists its image folder (no ``ann_file``)."""
    annotation_dir = dataset.data_prefix.get('seg_map_path')
    image_dir = dataset.data_prefix.get('img_path')
    ann_file = dataset.ann_file
    if (ann_file and not osp.isdir(ann_file)) or getattr(dataset, '_indices', None) is not None \
            or not annotation_dir or not osp.isdir(annotation_dir):
        return []  # a listed or sliced dataset leaves files out on purpose
    paired = {osp.normpath(dataset.get_data_info(i)['seg_map_path']) for i in range(len(dataset))}
    suffix = dataset.seg_map_suffix
    problems = []
    for folder, _, names in sorted(os.walk(annotation_dir)):
        for name in sorted(names):
            path = osp.normpath(osp.join(folder, name))
            if name.endswith(suffix) and path not in paired:
                relative = osp.relpath(path, annotation_dir)[:-len(suffix)]
                image = osp.join(image_dir, relative + dataset.img_suffix)
                problems.append(f'annotation {path} has no image ({image} does not exist)')
    return problems


def num_classes_settings(cfg):
    """``(config key, value)`` of every ``num_classes`` the model is built with: the
    classification head, the segmentation decode and auxiliary heads, the data
    preprocessor (the model's own, else the top-level one the runner passes to it)."""
    model, prefix = cfg.get('model'), 'model'
    while isinstance(model, dict) and isinstance(model.get('module'), dict):  # TTA wrapper
        model, prefix = model['module'], f'{prefix}.module'
    if not isinstance(model, dict):
        return []
    parts = []
    for name in ('head', 'decode_head', 'auxiliary_head', 'data_preprocessor'):
        part = model.get(name)
        if isinstance(part, dict):
            parts.append((f'{prefix}.{name}', part))
        elif isinstance(part, (list, tuple)):
            parts += [(f'{prefix}.{name}[{i}]', p) for i, p in enumerate(part)
                      if isinstance(p, dict)]
    if model.get('data_preprocessor') is None and isinstance(cfg.get('data_preprocessor'), dict):
        parts.append(('data_preprocessor', cfg.get('data_preprocessor')))
    return [(f'{key}.num_classes', part['num_classes']) for key, part in parts
            if isinstance(part.get('num_classes'), int)]


def check_datasets(cfg, datasets):
    """Runs every check on ``datasets`` (``{split name: dataset}``, wrappers allowed) for the
    model of ``cfg``; raises :class:`DataError` naming what is wrong and where."""
    needed, evidence = 0, None  # classes the data needs, and where that number comes from
    for split, dataset in datasets.items():
        for leaf in leaf_datasets(dataset):
            problems, largest, where = scan_dataset(leaf, split)
            segmentation = is_segmentation_dataset(leaf)
            if segmentation:
                problems += [f'{split} dataset {describe(leaf)}: {problem}'
                             for problem in unpaired_annotations(leaf)]
            raise_data_error(f'{len(problems)} problem(s) in the {split} data:', problems)
            classes = leaf.metainfo.get('classes') if segmentation else None
            if classes is not None and len(classes) > needed:
                needed = len(classes)
                evidence = (f"the {split} dataset {describe(leaf)} has {needed} classes "
                            "(metainfo['classes'])")
            if largest is not None and largest + 1 > needed:
                needed = largest + 1
                evidence = f'the {split} data has label {largest} at {where}'
    too_small = [(key, value) for key, value in num_classes_settings(cfg) if value < needed]
    raise_data_error(
        f'num_classes too small for the data: {evidence}, so num_classes must be at least '
        f'{needed}; the config has',
        [f'{key}={value}' for key, value in too_small])


@HOOKS.register_module()
class DataCheckHook(Hook):
    """Checks the datasets before training (train and val) and before testing (test), so
    bad data fails before a single step runs, named with where it is:

    - image files (and segmentation annotations) that are missing or empty, for datasets
      other than mmvpt's (those check at load, naming the list file and line);
    - mmseg datasets: images without an annotation and annotations without an image;
    - ``num_classes`` of the head, the segmentation heads or the data preprocessor smaller
      than the largest label + 1 (classification) or the dataset's class count
      (segmentation), named by config key, value and where the label is.

    Cheap: one ``os.stat`` per file and one read of each data info; no image is decoded and
    no random number is drawn.
    """
    priority = 'VERY_HIGH'

    def before_train(self, runner):
        datasets = dict(train=runner.train_dataloader.dataset)
        if runner.val_loop is not None:
            datasets['val'] = runner.val_dataloader.dataset
        check_datasets(runner.cfg, datasets)

    def before_test(self, runner):
        check_datasets(runner.cfg, dict(test=runner.test_dataloader.dataset))
