"""The five FGVC datasets, from their official archives (extracted) to the
``{train,val,test}.json`` files :class:`mmvpt.FGVC` reads, written into the task folder
next to the images.

test is the official test split. val comes from the official train split (Oxford Flowers
has an official val split, which VPT used): VPT's own files when the user has them, checked
against the archive and passed through unchanged, else a stratified split of the size VPT
used, chosen by a fixed seed (not VPT's exact split: its selection is not published as a
rule). The task is complete when its ``manifest.json`` is written, last.
"""
import collections
import dataclasses
import hashlib
import json
import os.path as osp
from typing import Callable

import numpy as np

from mmvpt.datasets.fgvc import FGVC_TASKS
from mmvpt.utils.atomic_io import atomic_write

from .common import (
    PreparationError,
    image_format,
    one_line,
    read_manifest,
    sha256_file,
    write_manifest,
)

SPLITS = ('train', 'val', 'test')
DEFAULT_SEED = 0


def read_table(folder, name, dataset):
    """``<id> <value>`` lines of an archive's text file -> {id: value}."""
    path = osp.join(folder, name)
    if not osp.isfile(path):
        raise PreparationError(f'{path} is missing (a file of the {dataset} archive)')
    table = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise PreparationError(f'{path}:{number}: expected "<id> <value>", got '
                                       f'{line.strip()!r}')
            table[parts[0]] = parts[1].strip()
    return table


def read_id_tables(folder, dataset):
    """CUB-200-2011 and NABirds: images.txt (id, path under images/), image_class_labels.txt
    (id, class) and train_test_split.txt (id, 1 for train)."""
    paths = read_table(folder, 'images.txt', dataset)
    classes = read_table(folder, 'image_class_labels.txt', dataset)
    is_train = read_table(folder, 'train_test_split.txt', dataset)
    items = []
    for image_id, path in paths.items():
        for table, name in ((classes, 'image_class_labels.txt'),
                            (is_train, 'train_test_split.txt')):
            if image_id not in table:
                raise PreparationError(f'{osp.join(folder, name)}: no line for image {image_id} '
                                       f'of images.txt')
        try:
            class_id = int(classes[image_id])
        except ValueError:
            raise PreparationError(f'{osp.join(folder, "image_class_labels.txt")}: class '
                                   f'{classes[image_id]!r} of image {image_id} is not a '
                                   f'number') from None
        items.append((path, class_id, 'train' if is_train[image_id] == '1' else 'test'))
    return items


def load_mat(folder, name, keys, dataset):
    """Variables ``keys`` of a MATLAB file of the archive, squeezed to 1-d numpy arrays."""
    from scipy.io import loadmat
    path = osp.join(folder, name)
    if not osp.isfile(path):
        raise PreparationError(f'{path} is missing (a file of the {dataset} archive)')
    try:
        content = loadmat(path, squeeze_me=True)
    except Exception as err:  # noqa: BLE001  scipy raises several kinds for a bad file
        raise PreparationError(f'{path}: not a readable MATLAB file ({one_line(err)})') from None
    missing = [key for key in keys if key not in content]
    if missing:
        raise PreparationError(f'{path} has no variable {", ".join(missing)} (is it the '
                               f'{dataset} file?)')
    return [np.atleast_1d(content[key]) for key in keys]


def read_cub(folder):
    return read_id_tables(folder, 'CUB-200-2011')


def read_nabirds(folder):
    return read_id_tables(folder, 'NABirds')


def read_flowers(folder):
    """imagelabels.mat (class 1..102 of image_00001.jpg, ...) and setid.mat (trnid, valid,
    tstid: 1-based image numbers); the images are jpg/image_NNNNN.jpg."""
    dataset = 'Oxford Flowers-102'
    labels, = load_mat(folder, 'imagelabels.mat', ['labels'], dataset)
    splits = load_mat(folder, 'setid.mat', ['trnid', 'valid', 'tstid'], dataset)
    items = []
    for split, numbers in zip(SPLITS, splits):
        for number in numbers:
            if not 1 <= number <= len(labels):
                raise PreparationError(f'{osp.join(folder, "setid.mat")}: image {number} is '
                                       f'outside the {len(labels)} labels of imagelabels.mat')
            items.append((f'jpg/image_{int(number):05d}.jpg', int(labels[number - 1]), split))
    return items


def read_dogs(folder):
    """train_list.mat and test_list.mat (lists.tar): file_list (paths under Images/) and
    labels (1..120)."""
    items = []
    for split in ('train', 'test'):
        files, labels = load_mat(folder, f'{split}_list.mat', ['file_list', 'labels'],
                                 'Stanford Dogs')
        items += [(str(path), int(label), split) for path, label in zip(files, labels)]
    return items


def read_cars(folder):
    """devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat (distributed apart from
    the devkit, whose cars_test_annos.mat has no classes): annotations with fname and class;
    the images are cars_train/ and cars_test/."""
    dataset = 'Stanford Cars'
    test_name = next((name for name in ('cars_test_annos_withlabels.mat',
                                        'devkit/cars_test_annos_withlabels.mat')
                      if osp.isfile(osp.join(folder, name))), 'cars_test_annos_withlabels.mat')
    items = []
    for split, name, image_dir in (('train', 'devkit/cars_train_annos.mat', 'cars_train'),
                                   ('test', test_name, 'cars_test')):
        annotations, = load_mat(folder, name, ['annotations'], dataset)
        fields = annotations.dtype.names or ()
        if 'fname' not in fields or 'class' not in fields:
            raise PreparationError(f'{osp.join(folder, name)}: annotations without fname and '
                                   f'class (fields: {", ".join(fields) or "none"})')
        items += [(f'{image_dir}/{record["fname"]}', int(record['class']), split)
                  for record in annotations]
    return items


@dataclasses.dataclass(frozen=True)
class FgvcSource:
    dataset: str
    read: Callable  # task folder -> [(image path under the image root, class id, split)]
    vpt_sizes: dict  # VPT's train / val / test sizes
    official_val: bool = False  # val is the dataset's own (else carved out of train)


# VPT's split sizes (its paper's appendix, Table 8).
FGVC_SOURCES = {
    'cub': FgvcSource('CUB-200-2011', read_cub, dict(train=5394, val=600, test=5794)),
    'nabirds': FgvcSource('NABirds', read_nabirds, dict(train=21536, val=2393, test=24633)),
    'flowers': FgvcSource('Oxford Flowers-102', read_flowers,
                          dict(train=1020, val=1020, test=6149), official_val=True),
    'dogs': FgvcSource('Stanford Dogs', read_dogs, dict(train=10800, val=1200, test=8580)),
    'cars': FgvcSource('Stanford Cars', read_cars, dict(train=7329, val=815, test=8041)),
}


def task_folder(root, task):
    """The existing folder of ``task`` under ``root`` (any of the names FGVC accepts)."""
    names = FGVC_TASKS[task][1]
    found = next((osp.join(root, name) for name in names if osp.isdir(osp.join(root, name))),
                 None)
    if found is None:
        raise PreparationError(f'{task}: no folder under {root}; looked for '
                               f'{", ".join(names)}')
    return found


def check_images(folder, image_root, items):
    """Every listed image is a JPEG or PNG file; the first problems are named."""
    missing, broken = [], []
    for path, _, _ in items:
        full = osp.join(folder, image_root, path)
        if not osp.isfile(full):
            missing.append(full)
        elif image_format(full) not in ('jpeg', 'png'):
            broken.append(full)
    if missing:
        raise PreparationError(f'{len(missing)} of the {len(items)} images the archive lists '
                               f'are missing, e.g. {missing[0]}')
    if broken:
        raise PreparationError(f'{len(broken)} images are not JPEG or PNG files (corrupt or '
                               f'truncated?), e.g. {broken[0]}')


def val_size(source, official_train_size):
    """VPT's val fraction of the official train split (for the real archive, VPT's size)."""
    total = source.vpt_sizes['train'] + source.vpt_sizes['val']
    return (2 * official_train_size * source.vpt_sizes['val'] + total) // (2 * total)


def hash_order(key, seed):
    return hashlib.sha256(f'{seed}:{key}'.encode()).hexdigest()


def stratified_val(train, count, seed=DEFAULT_SEED):
    """``count`` keys of ``train`` ({key: class}) for val, each class giving its share
    (largest remainders, ties to the smaller class id), chosen within a class in the order of
    sha256(seed:key): the same on every machine and numpy version."""
    by_class = collections.defaultdict(list)
    for key, class_id in train.items():
        by_class[class_id].append(key)
    classes = sorted(by_class)
    total = len(train)
    quotas = {c: count * len(by_class[c]) // total for c in classes}
    remainders = sorted(classes, key=lambda c: (-(count * len(by_class[c]) % total), c))
    for c in remainders[:count - sum(quotas.values())]:
        quotas[c] += 1
    return {key for c in classes
            for key in sorted(by_class[c], key=lambda key: hash_order(key, seed))[:quotas[c]]}


def read_split_file(path):
    try:
        with open(path) as f:
            split = json.load(f)
    except (OSError, ValueError) as err:
        raise PreparationError(f'{path}: not readable JSON ({one_line(err)})') from None
    if not isinstance(split, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in split.items()):
        raise PreparationError(f'{path}: expected {{"image path": class id}}')
    return split


def check_vpt_splits(task, source, vpt_folder, official):
    """VPT's {train,val,test}.json against the archive: the same images in the same official
    splits (train + val = the official train split, and Flowers' val its val), and a class id
    mapping that is one-to-one. Returns {split: (path, content)}."""
    files = {split: osp.join(vpt_folder, f'{split}.json') for split in SPLITS}
    missing = [path for path in files.values() if not osp.isfile(path)]
    if missing:
        raise PreparationError(f'{task}: VPT\'s split file {missing[0]} is missing')
    vpt = {split: read_split_file(path) for split, path in files.items()}
    overlap = vpt['train'].keys() & vpt['val'].keys()
    if overlap:
        raise PreparationError(f'{files["val"]}: {len(overlap)} images are in train.json too, '
                               f'e.g. {sorted(overlap)[0]}')
    # Which official split(s) each group of VPT's files must cover exactly.
    if source.official_val:
        groups = [(('train', ), ('train', )), (('val', ), ('val', )), (('test', ), ('test', ))]
    else:
        groups = [(('train', 'val'), ('train', )), (('test', ), ('test', ))]
    for vpt_splits, official_splits in groups:
        given = set().union(*(vpt[split].keys() for split in vpt_splits))
        expected = {path for path, (_, split) in official.items() if split in official_splits}
        if given != expected:
            extra, absent = sorted(given - expected), sorted(expected - given)
            example = (f'{extra[0]} is not an image of it' if extra else
                       f'{absent[0]} is missing')
            raise PreparationError(
                f'{task}: VPT\'s {" + ".join(s + ".json" for s in vpt_splits)} in {vpt_folder} '
                f'do not cover the archive\'s official {" + ".join(official_splits)} split '
                f'({len(extra)} extra, {len(absent)} missing; {example})')
    pairs = {(class_id, official[path][0]) for split in SPLITS
             for path, class_id in vpt[split].items()}
    for side, name in ((0, 'VPT\'s'), (1, 'the official')):
        counts = collections.Counter(pair[side] for pair in pairs)
        clash = next((value for value, n in counts.items() if n > 1), None)
        if clash is not None:
            others = sorted(pair[1 - side] for pair in pairs if pair[side] == clash)
            raise PreparationError(f'{task}: {name} class {clash} maps to several classes '
                                   f'({others[:5]}) in {vpt_folder}: not the same labels')
    return {split: (files[split], vpt[split]) for split in SPLITS}


def vpt_splits(task, source, vpt_folder, folder, official):
    """VPT's files, checked; (splits, bytes to write, origin for the manifest)."""
    checked = check_vpt_splits(task, source, vpt_folder, official)
    contents = {}  # VPT's bytes pass through unchanged (in place: nothing to write)
    if vpt_folder != folder:
        for split in SPLITS:
            with open(checked[split][0], 'rb') as f:
                contents[split] = f.read()
    origin = dict(origin='vpt', files=vpt_folder,
                  note='VPT\'s files, checked against the archive, passed through')
    return {split: checked[split][1] for split in SPLITS}, contents, origin


def our_splits(source, official, seed):
    """test: the official test split; val: the official one (Flowers) or a stratified part of
    the official train split of VPT's size. (splits, text to write, origin)."""
    train = {path: c for path, (c, split) in official.items() if split == 'train'}
    if source.official_val:
        val = {path: c for path, (c, split) in official.items() if split == 'val'}
        origin = dict(origin='official',
                      note='the dataset\'s own train / val / test splits, as VPT used them')
    else:
        chosen = stratified_val(train, val_size(source, len(train)), seed)
        val = {path: train.pop(path) for path in sorted(chosen)}
        origin = dict(origin='stratified', seed=seed,
                      note='val: VPT\'s size, stratified by class, chosen by sha256(seed:path); '
                      'not VPT\'s exact split (pass --vpt-splits with VPT\'s files for that)')
    test = {path: c for path, (c, split) in official.items() if split == 'test'}
    splits = dict(train=train, val=val, test=test)
    return splits, {split: json.dumps(splits[split], indent=0) for split in SPLITS}, origin


def convert_task(root, task, vpt_root, seed, log):
    source = FGVC_SOURCES[task]
    num_classes, _, image_root = FGVC_TASKS[task]
    folder = task_folder(root, task)
    manifest = read_manifest(folder)
    if manifest is not None:
        log(f'{task}: complete ({manifest.get("split", {}).get("origin")} split), skipped')
        return 'skipped'
    vpt_folder = None
    if vpt_root is not None:
        vpt_folder = next((osp.join(vpt_root, name) for name in FGVC_TASKS[task][1]
                           if osp.isfile(osp.join(vpt_root, name, 'train.json'))), None)
    present = [split for split in SPLITS if osp.isfile(osp.join(folder, f'{split}.json'))]
    if present and vpt_folder != folder:
        raise PreparationError(
            f'{folder} holds {", ".join(s + ".json" for s in present)} without a manifest.json '
            f'(not written by this converter): if they are VPT\'s, pass --vpt-splits {root} to '
            f'check and keep them, else remove them')

    items = source.read(folder)
    official = {}
    for path, class_id, split in items:
        if path in official:
            raise PreparationError(f'{task}: the archive lists {path} twice')
        official[path] = (class_id, split)
    check_images(folder, image_root, items)
    official_sizes = dict(collections.Counter(split for _, _, split in items))
    classes = {class_id for _, class_id, _ in items}
    if len(classes) > num_classes:
        raise PreparationError(f'{task}: the archive has {len(classes)} classes, {task} has '
                               f'{num_classes}')

    if vpt_folder is not None:
        splits, contents, origin = vpt_splits(task, source, vpt_folder, folder, official)
    else:
        splits, contents, origin = our_splits(source, official, seed)

    sizes = {split: len(splits[split]) for split in SPLITS}
    if sizes != source.vpt_sizes:
        log(f'warning: {task}: splits of {sizes["train"]} / {sizes["val"]} / {sizes["test"]} '
            f'images, VPT\'s had {source.vpt_sizes["train"]} / {source.vpt_sizes["val"]} / '
            f'{source.vpt_sizes["test"]} (an incomplete or different archive?)')
    for split, content in contents.items():
        atomic_write(osp.join(folder, f'{split}.json'), content)
    write_manifest(folder, dict(
        benchmark='fgvc', task=task, num_classes=num_classes, classes_found=len(classes),
        image_root=image_root,
        source=dict(dataset=source.dataset, official_split_sizes=official_sizes,
                    vpt_split_sizes=source.vpt_sizes, matches_vpt_sizes=sizes == source.vpt_sizes),
        split=origin,
        splits={split: dict(count=sizes[split], classes=len(set(splits[split].values())))
                for split in SPLITS},
        list_sha256={f'{split}.json': sha256_file(osp.join(folder, f'{split}.json'))
                     for split in SPLITS}))
    log(f'{task}: {sizes["train"]} / {sizes["val"]} / {sizes["test"]} images '
        f'({origin["origin"]} split) in {folder}')
    return 'converted'


def convert_fgvc(root, tasks, vpt_splits=None, seed=DEFAULT_SEED, log=print):
    """Writes the split files of ``tasks`` into their folders under ``root``; returns
    ``{task: 'converted' | 'skipped'}``. ``vpt_splits``: a folder holding VPT's split files
    as ``<task folder name>/{train,val,test}.json`` (it may be ``root`` itself)."""
    if vpt_splits is not None and not osp.isdir(vpt_splits):
        raise PreparationError(f'--vpt-splits {vpt_splits} is not a folder')
    return {task: convert_task(root, task, vpt_splits, seed, log) for task in tasks}
