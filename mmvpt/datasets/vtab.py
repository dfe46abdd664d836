"""VTAB-1k in the folder + list-file format used by most PEFT code (NOAH, SSF, FacT, CVPT)."""
import os.path as osp

from mmpretrain.datasets import BaseDataset

from mmvpt.registry import DATASETS

from .sample_source import SAMPLE_SOURCE_KEY, SampleSourceMixin, line_source

# canonical folder: (group, classes, folder aliases seen in other repos)
VTAB_TASKS = {
    'cifar': ('natural', 100, ('cifar100', )),
    'caltech101': ('natural', 102, ()),
    'dtd': ('natural', 47, ()),
    'oxford_flowers102': ('natural', 102, ('flowers102', )),
    'oxford_iiit_pet': ('natural', 37, ('oxford_pet', 'pets')),
    'svhn': ('natural', 10, ()),
    'sun397': ('natural', 397, ()),
    'patch_camelyon': ('specialized', 2, ()),
    'eurosat': ('specialized', 10, ()),
    'resisc45': ('specialized', 45, ()),
    'diabetic_retinopathy': ('specialized', 5, ()),
    'clevr_count': ('structured', 8, ()),
    'clevr_dist': ('structured', 6, ()),
    'dmlab': ('structured', 6, ()),
    'kitti': ('structured', 4, ()),
    'dsprites_loc': ('structured', 16, ()),
    'dsprites_ori': ('structured', 16, ()),
    'smallnorb_azi': ('structured', 18, ()),
    'smallnorb_ele': ('structured', 9, ()),
}
VTAB_SPLITS = ('train800', 'val200', 'train800val200', 'test')


def canonical_vtab_task(task):
    """The canonical folder name of a VTAB task given it or one of its aliases."""
    for name, (_, _, aliases) in VTAB_TASKS.items():
        if task == name or task in aliases:
            return name
    raise ValueError(f'unknown VTAB-1k task {task!r}; tasks: {", ".join(VTAB_TASKS)}')


def read_list_file(path, num_classes):
    """``relative/path label`` lines -> [(path, label, line number)], with the file and line
    named for any line that does not parse or whose label is outside [0, num_classes)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'list file {path} does not exist')
    samples = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise ValueError(f'{path}:{number}: expected "relative/path label", got {line!r}')
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(f'{path}:{number}: label {label} outside the class range '
                                 f'0..{num_classes - 1}')
            samples.append((parts[0], label, number))
    return samples


@DATASETS.register_module()
class ListFileDataset(SampleSourceMixin, BaseDataset):
    """Images in a folder with one list file per split: ``<data_root>/<split>.txt``, each
    line ``relative/path label`` (paths relative to ``data_root``), labels in
    ``[0, num_classes)``. The format of VTAB-1k, and the quickest way to bring your own data.
    A listed image that is missing or empty fails when the list loads, one that does not
    decode when it is loaded, both named with the list file, line and path.

    Args:
        data_root: the folder holding the images and list files.
        split: the list file's name without ``.txt``.
        num_classes: number of classes (labels are checked against it).
        classes: optional class names (default ``'0'``, ``'1'``, ...).
    """

    def __init__(self, data_root, split, num_classes, classes=None, **kwargs):
        if not osp.isdir(data_root):
            raise FileNotFoundError(f'dataset folder {data_root} does not exist')
        self.split = split
        self.num_classes = num_classes
        names = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f'{len(names)} class names given for num_classes={num_classes}')
        kwargs.setdefault('metainfo', dict(classes=names))
        super().__init__(ann_file=f'{split}.txt', data_root=data_root, data_prefix='', **kwargs)

    def load_data_list(self):
        return [dict(img_path=osp.join(self.data_root, path), gt_label=label,
                     **{SAMPLE_SOURCE_KEY: line_source(self.ann_file, number)})
                for path, label, number in read_list_file(self.ann_file, self.num_classes)]


@DATASETS.register_module()
class VTAB1k(ListFileDataset):
    """One VTAB-1k task: ``<data_root>/<task>/`` holding the images and the list files
    ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt``.

    Args:
        data_root: the folder holding the task folders.
        task: canonical task name (``cifar``, ``caltech101``, ..., ``smallnorb_ele``) or an
            alias (``cifar100``, ``flowers102``, ``pets``, ...); the task folder may be
            named either way.
        split: ``train800``, ``val200``, ``train800val200`` or ``test``.
    """

    def __init__(self, data_root, task, split='train800', **kwargs):
        self.task = canonical_vtab_task(task)
        if split not in VTAB_SPLITS:
            raise ValueError(f'VTAB1k split={split!r}: choose one of {VTAB_SPLITS}')
        self.group, num_classes, aliases = VTAB_TASKS[self.task]
        candidates = [osp.join(data_root, name) for name in (self.task, task, *aliases)]
        task_dir = next((c for c in candidates if osp.isdir(c)), None)
        if task_dir is None:
            raise FileNotFoundError(f'VTAB-1k task folder not found; looked for '
                                    f'{", ".join(dict.fromkeys(candidates))}')
        super().__init__(task_dir, split, num_classes, **kwargs)
