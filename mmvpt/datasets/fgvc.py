"""The five FGVC tasks with VPT's JSON splits."""
import json
import os.path as osp

from mmpretrain.datasets import BaseDataset

from mmvpt.registry import DATASETS

from .sample_source import SAMPLE_SOURCE_KEY, SampleSourceMixin, json_key_source

# canonical name: (classes, folder names seen, image root inside the task folder)
FGVC_TASKS = {
    'cub': (200, ('cub', 'CUB_200_2011'), 'images'),
    'nabirds': (555, ('nabirds', 'NABirds'), 'images'),
    'flowers': (102, ('flowers', 'OxfordFlower', 'oxford_flowers'), ''),
    'dogs': (120, ('dogs', 'Stanford-dogs', 'stanford_dogs'), 'Images'),
    'cars': (196, ('cars', 'Stanford-cars', 'stanford_cars'), ''),
}
FGVC_SPLITS = ('train', 'val', 'trainval', 'test')


@DATASETS.register_module()
class FGVC(SampleSourceMixin, BaseDataset):
    """One FGVC task: ``<data_root>/<task folder>/{train,val,test}.json``, each a dict
    ``{"relative/image/path": class_id}``.

    Class ids are remapped through the sorted set of ids found in all the task's JSON
    files, so every split shares one mapping. ``trainval`` joins train and val (VPT's
    final training set). A listed image that is missing or empty fails when the splits load,
    one that does not decode when it is loaded, both named with the JSON file, key and path.

    Args:
        data_root: the folder holding the task folders.
        task: ``cub``, ``nabirds``, ``flowers``, ``dogs`` or ``cars``.
        split: ``train``, ``val``, ``trainval`` or ``test``.
        image_root: image folder relative to the task folder (default: the dataset's own,
            ``images/`` for CUB and NABirds, ``Images/`` for Dogs, the task folder itself
            for Cars and Flowers).
    """

    def __init__(self, data_root, task, split='train', image_root=None, **kwargs):
        if task not in FGVC_TASKS:
            raise ValueError(f'unknown FGVC task {task!r}; tasks: {", ".join(FGVC_TASKS)}')
        if split not in FGVC_SPLITS:
            raise ValueError(f'FGVC split={split!r}: choose one of {FGVC_SPLITS}')
        self.task, self.split = task, split
        self.num_classes, folders, default_root = FGVC_TASKS[task]
        candidates = [osp.join(data_root, name) for name in folders]
        task_dir = next((c for c in candidates if osp.isdir(c)), None)
        if task_dir is None:
            raise FileNotFoundError('FGVC task folder not found; looked for '
                                    f'{", ".join(candidates)}')
        self.image_root = default_root if image_root is None else image_root
        kwargs.setdefault('metainfo', dict(classes=[str(i) for i in range(self.num_classes)]))
        super().__init__(ann_file=f'{split}.json', data_root=task_dir, **kwargs)

    def _read(self, split):
        path = osp.join(self.data_root, f'{split}.json')
        if not osp.isfile(path):
            raise FileNotFoundError(f'FGVC split file {path} does not exist')
        with open(path) as f:
            try:
                annotations = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f'{path}: not valid JSON ({err})') from None
        if not isinstance(annotations, dict):
            raise ValueError(f'{path}: expected a dict {{"image path": class_id}}')
        return path, annotations

    def load_data_list(self):
        splits = ('train', 'val') if self.split == 'trainval' else (self.split, )
        class_ids = set()
        for split in ('train', 'val', 'test'):
            if osp.isfile(osp.join(self.data_root, f'{split}.json')):
                class_ids.update(self._read(split)[1].values())
        if len(class_ids) > self.num_classes:
            raise ValueError(f'{self.data_root}: {len(class_ids)} class ids in the JSON splits, '
                             f'but {self.task} has {self.num_classes} classes')
        to_label = {class_id: label for label, class_id in enumerate(sorted(class_ids))}
        image_dir = osp.join(self.data_root, self.image_root)
        data_list = []
        for split in splits:
            path_of_split, annotations = self._read(split)
            data_list += [dict(img_path=osp.join(image_dir, path), gt_label=to_label[class_id],
                               **{SAMPLE_SOURCE_KEY: json_key_source(path_of_split, path)})
                          for path, class_id in annotations.items()]
        return data_list
