"""VTAB-1k from tensorflow-datasets into the folder layout :class:`mmvpt.VTAB1k` reads, with
VPT's split definitions.

Each of the 19 tasks is a row of :data:`VTAB_SOURCES`: the tfds dataset and version, which
tfds split and slice each VTAB-1k split comes from (:class:`Slice`), and how the label and
the image are taken from a tfds example. The facts come from VPT's data code (itself
Google's task_adaptation); the code is ours.

A task is written into ``<root>/<task>.partial`` and renamed to ``<root>/<task>`` once its
lists and ``manifest.json`` are written, so a killed run leaves nothing that looks complete,
and a task that is complete is skipped by the next run.
"""
import concurrent.futures
import dataclasses
import importlib.util
import os
import os.path as osp
from typing import Callable, Optional

import numpy as np
from PIL import Image

from mmvpt.datasets.vtab import VTAB_SPLITS, VTAB_TASKS

from . import downloads
from .common import (
    PreparationError,
    one_line,
    read_manifest,
    sha256_file,
    staged_folder,
    write_manifest,
)


def _extra(name):
    """requirements/extras/NAME of this checkout, by absolute path (a converter may run from
    any folder); relative where mmvpt is installed without its repository."""
    relative = osp.join('requirements', 'extras', name)
    path = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))),
                    relative)
    return path if osp.isfile(path) else relative


DATA_EXTRA = _extra('data.txt')
TENSORFLOW_EXTRA = _extra('data-tensorflow.txt')
# PNG is lossless whatever the level; zlib's level 1 wrote a 600x512 photo 3.4x faster than
# PIL's default 6, for 7% more bytes.
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 95
FETCH_CHUNK = 64  # examples read from tfds at once, then encoded by the workers


@dataclasses.dataclass(frozen=True)
class Slice:
    """Examples ``[start, start + count)`` of the tfds split ``split``; ``start`` is the sum
    of ``after``'s percentages of the split's size, each rounded down (VPT's arithmetic:
    ``train[45000:45200]`` is ``after=(90,), count=200`` of CIFAR's 50000). ``count=None``
    runs to the split's end. A slice past the end is cut short, as tfds' slicing does."""
    split: str
    after: tuple = ()
    count: Optional[int] = None

    def bounds(self, size):
        start = min(sum(percent * size // 100 for percent in self.after), size)
        stop = size if self.count is None else min(start + self.count, size)
        return start, stop

    def describe(self, size):
        """In tfds' slicing syntax, e.g. ``train[45000:45200]``."""
        start, stop = self.bounds(size)
        return f'{self.split}[{start}:{stop}]'


def val_from_train(percent, test='test'):
    """train800 = train[:800]; val200 = the 200 examples after ``percent``% of train (VPT
    holds that part of the official train split out for validation); test = ``test``."""
    return dict(train800=Slice('train', count=800), val200=Slice('train', (percent, ), 200),
                test=Slice(test))


def val_from_validation():
    """train800 = train[:800]; val200 = validation[:200]; test = the official test split."""
    return dict(train800=Slice('train', count=800), val200=Slice('validation', count=200),
                test=Slice('test'))


def three_parts_of_train(train_percent, val_percent):
    """Datasets with only a train split: train, val and test are its first ``train_percent``,
    next ``val_percent`` and the rest; train800 and val200 start the first two."""
    return dict(train800=Slice('train', count=800),
                val200=Slice('train', (train_percent, ), 200),
                test=Slice('train', (train_percent, val_percent)))


# Labels: a tfds example (a dict of numpy values) -> int.
def plain_label(example):
    return int(example['label'])


def bin_below(edges, value):
    """Index of the last edge below ``value`` (VPT: ``reduce_max(where(edges - value < 0))``)."""
    return int(np.sum(np.asarray(edges) < value)) - 1


CLEVR_DISTANCE_EDGES = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DISTANCE_EDGES = (-100.0, 8.0, 20.0, 999.0)
KITTI_VEHICLE_TYPES = 3  # object types 0, 1, 2: Car, Van, Truck
KITTI_NO_VEHICLE = 1000.0  # distance given to a scene without a vehicle: the last bin


def clevr_count(example):
    """Number of objects (3..10) minus 3."""
    return len(example['objects']['size']) - 3


def clevr_distance(example):
    """Bin of the smallest depth (pixel_coords' third value) among the objects."""
    return bin_below(CLEVR_DISTANCE_EDGES, np.min(example['objects']['pixel_coords'][:, 2]))


def kitti_closest_vehicle(example):
    """Bin of the closest vehicle's depth (location z, metres): <8, 8-20, >20, no vehicle."""
    objects = example['objects']
    locations = np.asarray(objects['location']).reshape(-1, 3)  # (x, y, z) per object
    depths = locations[np.asarray(objects['type']) < KITTI_VEHICLE_TYPES, 2]
    return bin_below(KITTI_DISTANCE_EDGES, np.min(depths, initial=KITTI_NO_VEHICLE))


def binned(key, original_classes, classes):
    """``example[key]`` in ``classes`` equal bins of its ``original_classes`` values (VPT:
    ``floor(value / (original / classes))``, here in integers)."""
    def label(example):
        return int(example[key]) * classes // original_classes
    label.__doc__ = f'{key} ({original_classes} values) in {classes} bins'
    return label


def attribute(key):
    def label(example):
        return int(example[key])
    label.__doc__ = key
    return label


# Images: a tfds example -> HxWx3 or HxW uint8 array, written as it is.
def rgb_image(example):
    return example['image']


def grey_image(example):
    """The single channel (VPT tiles it to three; the loader does the same)."""
    return example['image'][..., 0]


def dsprites_image(example):
    """dSprites' 0/1 mask times 255 (VPT's arithmetic, in uint8)."""
    return example['image'][..., 0] * np.uint8(255)


@dataclasses.dataclass(frozen=True)
class VtabSource:
    tfds_name: str  # with the config: 'eurosat/rgb'
    version: str  # the version prepared (the one VPT used where this tfds can generate it)
    vpt_version: str
    splits: dict  # train800 / val200 / test -> Slice
    tfds_sizes: dict  # split sizes of VPT's version, what VPT's slices were taken of
    label: Callable = plain_label
    image: Callable = rgb_image
    version_note: str = ''  # why version differs from vpt_version
    manual_paths: tuple = ()  # what a manual download leaves in the manual dir
    manual_instruction: str = ''
    # URLs in tfds' checksums for the dataset that this version and config do not fetch
    unused_downloads: tuple = ()

    def label_rule(self):
        return (self.label.__doc__ or self.label.__name__).strip().split('\n')[0]


RESISC45_MANUAL = (
    'resisc45 is a manual download: get NWPU-RESISC45.rar (the OneDrive link in tfds\' '
    'resisc45 page, https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs) and extract it into '
    '{manual_dir} (e.g. `unrar x NWPU-RESISC45.rar {manual_dir}/`) so that '
    '{manual_dir}/NWPU-RESISC45/<class>/*.jpg exist, then run again')
RETINOPATHY_MANUAL = (
    'diabetic_retinopathy is a manual download from Kaggle (competition '
    'diabetic-retinopathy-detection: train.zip.001-005, test.zip.001-007, sample.zip, '
    'trainLabels.csv.zip; check that all five train parts arrived): join the parts '
    '(`cat train.zip.* > train.zip; cat test.zip.* > test.zip`; if unzip fails on the large '
    'archives, `7z x` or `jar xf` read them), unpack train.zip, test.zip, sample.zip and '
    'trainLabels.csv.zip into {manual_dir} so that it holds train/, test/, sample/ and '
    'trainLabels.csv, then run again (tfds downloads the test labels itself)')

CALTECH101_OLD_URL = ('https://drive.google.com/uc?export=download&'
                      'id=137RyRjvTBkBiIfeYBNZBtViDHQ6_Ewsp')  # 3.0.1's
EUROSAT_ALL_BANDS_URL = 'http://madm.dfki.de/files/sentinel/EuroSATallBands.zip'  # eurosat/all

# The 19 tasks. Versions: VPT's VTAB_SETUP.md (tfds 4.4.0); this tfds (4.9.10) generates
# only the newest version of caltech101, oxford_iiit_pet, svhn_cropped and kitti.
VTAB_SOURCES = {
    'cifar': VtabSource('cifar100', '3.0.2', '3.0.2', val_from_train(90),
                        dict(train=50000, test=10000)),
    'caltech101': VtabSource('caltech101', '3.0.2', '3.0.1', val_from_train(90),
                             dict(train=3060, test=6084),
                             version_note='3.0.2 changed only the download URL',
                             unused_downloads=(CALTECH101_OLD_URL, )),
    'dtd': VtabSource('dtd', '3.0.1', '3.0.1', val_from_validation(),
                      dict(train=1880, validation=1880, test=1880)),
    'oxford_flowers102': VtabSource('oxford_flowers102', '2.1.1', '2.1.1', val_from_validation(),
                                    dict(train=1020, validation=1020, test=6149)),
    'oxford_iiit_pet': VtabSource(
        'oxford_iiit_pet', '4.0.0', '3.2.0', val_from_train(80), dict(train=3680, test=3669),
        version_note='4.0.0 added head boxes, re-encoded the corrupt images and moved the URL: '
        'a few images may differ from VPT\'s'),
    'svhn': VtabSource('svhn_cropped', '3.1.0', '3.0.0', val_from_train(90),
                       dict(train=73257, test=26032),
                       version_note='3.1.0 is the only version this tfds generates '
                       '(release note: new split API)'),
    'sun397': VtabSource('sun397/tfds', '4.0.0', '4.0.0', val_from_validation(),
                         dict(train=76128, validation=10875, test=21750)),
    'patch_camelyon': VtabSource('patch_camelyon', '2.0.0', '2.0.0', val_from_validation(),
                                 dict(train=262144, validation=32768, test=32768)),
    'eurosat': VtabSource('eurosat/rgb', '2.0.0', '2.0.0', three_parts_of_train(60, 20),
                          dict(train=27000), unused_downloads=(EUROSAT_ALL_BANDS_URL, )),
    'resisc45': VtabSource('resisc45', '3.0.0', '3.0.0', three_parts_of_train(60, 20),
                           dict(train=31500), manual_paths=('NWPU-RESISC45', ),
                           manual_instruction=RESISC45_MANUAL),
    'diabetic_retinopathy': VtabSource(
        'diabetic_retinopathy_detection/btgraham-300', '3.0.0', '3.0.0', val_from_validation(),
        dict(train=35126, validation=10906, test=42670),
        manual_paths=('train', 'test', 'sample', 'trainLabels.csv'),
        manual_instruction=RETINOPATHY_MANUAL),
    'clevr_count': VtabSource('clevr', '3.1.0', '3.1.0', val_from_train(90, test='validation'),
                              dict(train=70000, validation=15000), label=clevr_count),
    'clevr_dist': VtabSource('clevr', '3.1.0', '3.1.0', val_from_train(90, test='validation'),
                             dict(train=70000, validation=15000), label=clevr_distance),
    'dmlab': VtabSource('dmlab', '2.0.1', '2.0.1', val_from_validation(),
                        dict(train=65550, validation=22628, test=22735)),
    'kitti': VtabSource('kitti', '3.3.0', '3.2.0', val_from_validation(),
                        dict(train=6347, validation=423, test=711), label=kitti_closest_vehicle,
                        version_note='3.3.0 added the objects\' occlusion labels; the images, '
                        'types and locations the label uses are 3.2.0\'s'),
    'dsprites_loc': VtabSource('dsprites', '2.0.0', '2.0.0', three_parts_of_train(80, 10),
                               dict(train=737280), label=binned('label_x_position', 32, 16),
                               image=dsprites_image),
    'dsprites_ori': VtabSource('dsprites', '2.0.0', '2.0.0', three_parts_of_train(80, 10),
                               dict(train=737280), label=binned('label_orientation', 40, 16),
                               image=dsprites_image),
    # VPT: val200 = test[:200], test = test[50%:] (tfds rounds the percentage; for 24300
    # examples it is exact).
    'smallnorb_azi': VtabSource('smallnorb', '2.0.0', '2.0.0',
                                dict(train800=Slice('train', count=800),
                                     val200=Slice('test', count=200), test=Slice('test', (50, ))),
                                dict(train=24300, test=24300), label=attribute('label_azimuth'),
                                image=grey_image),
    'smallnorb_ele': VtabSource('smallnorb', '2.0.0', '2.0.0',
                                dict(train800=Slice('train', count=800),
                                     val200=Slice('test', count=200), test=Slice('test', (50, ))),
                                dict(train=24300, test=24300),
                                label=attribute('label_elevation'), image=grey_image),
}


def vtab_split_sizes(task, tfds_sizes=None):
    """The four VTAB-1k split sizes of ``task`` from tfds split sizes (default: those of
    VPT's versions, which gives VPT's sizes)."""
    source = VTAB_SOURCES[task]
    tfds_sizes = source.tfds_sizes if tfds_sizes is None else tfds_sizes
    sizes = {}
    for split, piece in source.splits.items():
        start, stop = piece.bounds(tfds_sizes[piece.split])
        sizes[split] = stop - start
    sizes['train800val200'] = sizes['train800'] + sizes['val200']
    return sizes


def import_tfds():
    """tensorflow_datasets, or a PreparationError naming what to install."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise PreparationError(f'tensorflow-datasets is needed to read VTAB\'s sources '
                               f'({one_line(err)}): pip install -r {DATA_EXTRA}') from None
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)  # tfds' info lines would bury ours
    return tfds


def manual_download_problem(source, manual_dir):
    """What is missing of ``source``'s manual download and how to get it, or None."""
    missing = [name for name in source.manual_paths
               if not osp.exists(osp.join(manual_dir, name))
               or (osp.isdir(osp.join(manual_dir, name))
                   and not os.listdir(osp.join(manual_dir, name)))]
    if missing:
        return (f'{", ".join(osp.join(manual_dir, name) for name in missing)} missing or '
                f'empty; ' + source.manual_instruction.format(manual_dir=manual_dir))
    return None


def tfds_builder(task, source, tfds, tfds_dir):
    name = f'{source.tfds_name}:{source.version}'
    try:
        return tfds.builder(name, data_dir=tfds_dir)
    except Exception as err:  # noqa: BLE001  unknown name or version: tfds' words, one line
        raise PreparationError(f'{task}: tensorflow-datasets cannot provide {name} '
                               f'({one_line(err)})') from None


def downloads_for_real(builder):
    """False under tfds.testing.mock_data, whose download_and_prepare does nothing."""
    return type(builder).download_and_prepare.__module__.startswith('tensorflow_datasets.core')


def needs_tensorflow(builder):
    """tfds' own builders generate with TensorFlow: they read their archives with tf.io.gfile
    and encode decoded images with tf.image (all of VTAB's do one or both); a builder
    defined elsewhere may not."""
    return type(builder).__module__.startswith('tensorflow_datasets.')


def tensorflow_installed():
    return importlib.util.find_spec('tensorflow') is not None


def download_folders(builder):
    """tfds' download folder, the dataset's folder in it and the extraction folder."""
    folder = osp.join(str(builder.data_dir_root), 'downloads')
    return folder, osp.join(folder, builder.name), osp.join(folder, 'extracted')


def local_copy(builder, url, info, manual_dir):
    """Where tfds takes ``url`` from without downloading it, or None: a file of its
    checksums' name in the manual folder (tfds checks its sha256), or tfds' download cache."""
    from etils import epath
    from tensorflow_datasets.core.download import resource as tfds_resource
    if info.filename and osp.exists(osp.join(manual_dir, info.filename)):
        return osp.join(manual_dir, info.filename)
    for folder in download_folders(builder)[:2]:  # tfds' legacy layout, and the dataset's
        for checksum in (info.checksum, None):
            path = epath.Path(folder) / tfds_resource.get_dl_fname(url, checksum)
            if tfds_resource.is_locally_cached(path):
                return str(path)
    return None


def missing_downloads(builder, source, manual_dir):
    """``{url: tfds' UrlInfo}`` of the files preparing ``builder`` fetches that are not here."""
    return {url: info for url, info in sorted((builder.url_infos or {}).items())
            if url not in source.unused_downloads
            and local_copy(builder, url, info, manual_dir) is None}


def describe_files(files):
    """Names, sizes and where to get them: the URLs of one or two, else their common folder."""
    infos = list(files.values())
    if len(files) <= 2:
        return ', '.join(f'{info.filename} ({info.size}, {url})' for url, info in files.items())
    prefix = osp.commonprefix(list(files)).rsplit('/', 1)[0] + '/'
    total = type(infos[0].size)(sum(info.size for info in infos))
    return f'{", ".join(info.filename for info in infos)} ({total} in all, from {prefix})'


def download_problem(files, blocked, manual_dir):
    hosts = {downloads.address_of(url) for url in files}
    reasons = ', '.join(f'{downloads.describe_address(address)} ({blocked[address]})'
                        for address in sorted(hosts))
    return (f'cannot reach {reasons} to download {describe_files(files)}: put '
            f'{"it" if len(files) == 1 else "them"} into {manual_dir}, where tfds takes '
            f'downloads from (checking their sha256)')


def check_before_downloading(root, tasks, sources, tfds, tfds_dir, manual_dir):
    """Before any download, for each task still to write whose tfds dataset is not prepared:
    its manual files, TensorFlow, and the hosts of the files to download (one short probe
    each, all at once). A PreparationError names what the first task that lacks something
    lacks, how to get it and the routes that need neither, and which other tasks lack some."""
    pending = {}
    for task in tasks:
        if osp.isdir(osp.join(root, task)):
            continue  # complete, or not this converter's: convert_task says which
        source = sources[task]
        builder = tfds_builder(task, source, tfds, tfds_dir)
        if builder.is_prepared():
            continue
        needs = []  # what preparing it here lacks, besides the manual files
        missing = {}
        if downloads_for_real(builder):
            if needs_tensorflow(builder) and not tensorflow_installed():
                needs.append(
                    f'generating {source.tfds_name}:{source.version} from its downloads needs '
                    f'TensorFlow, not installed here (tfds\' builders read their archives with '
                    f'it): pip install -r {TENSORFLOW_EXTRA}')
            missing = missing_downloads(builder, source, manual_dir)
        pending[task] = (source, manual_download_problem(source, manual_dir), needs, missing)
    blocked = downloads.unreachable([url for *_, missing in pending.values() for url in missing])
    stopped = {}
    for task, (source, manual, needs, missing) in pending.items():
        cut_off = {url: info for url, info in missing.items()
                   if downloads.address_of(url) in blocked}
        if cut_off:
            needs.append(download_problem(cut_off, blocked, manual_dir))
        if needs:
            needs.append(
                f'or use a copy prepared elsewhere ({source.tfds_name}:{source.version} is '
                f'not prepared in {tfds_dir}): --tfds-dir DIR where it is, or an existing '
                f'VTAB-1k folder (check it with `vtab1k.py --verify ROOT`)')
        problems = ([manual] if manual else []) + needs
        if problems:
            stopped[task] = f'{task}: {"; ".join(problems)}'
    if stopped:
        first, *others = stopped
        also = (f' ({len(others)} more of the tasks asked for cannot be prepared here either: '
                f'{", ".join(others)})' if others else '')
        raise PreparationError(stopped[first] + also)


def open_tfds_splits(task, source, tfds, tfds_dir, manual_dir):
    """Prepares the tfds dataset (download and generation, once) and opens the splits the
    task reads, as random-access data sources. Failures become one line, and leave none of
    the partial files of this run's downloads."""
    name = f'{source.tfds_name}:{source.version}'
    builder = tfds_builder(task, source, tfds, tfds_dir)
    if source.manual_paths and not builder.is_prepared():
        problem = manual_download_problem(source, manual_dir)
        if problem:
            raise PreparationError(f'{task}: {problem}')
    folders = download_folders(builder)
    partials = downloads.partial_files(*folders)
    try:
        try:
            # array_record: the format tfds reads with random access and without TensorFlow.
            builder.download_and_prepare(
                file_format='array_record',
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except BaseException:
            downloads.remove_partials(partials, *folders)
            raise
    except ImportError as err:
        if (err.name or '').split('.')[0] == 'tensorflow':
            raise PreparationError(
                f'{task}: generating {name} from its download needs TensorFlow (tfds\' '
                f'builders read their archives with it): pip install -r {TENSORFLOW_EXTRA}'
            ) from None
        raise PreparationError(f'{task}: generating {name} needs the module {err.name}: pip '
                               f'install it ({one_line(err)})') from None
    except Exception as err:  # noqa: BLE001
        raise PreparationError(f'{task}: tensorflow-datasets could not prepare {name} in '
                               f'{tfds_dir} ({one_line(err)})') from None
    data = {}
    for split in sorted({piece.split for piece in source.splits.values()}):
        try:
            data[split] = builder.as_data_source(split=split)
        except Exception as err:  # noqa: BLE001  e.g. a copy prepared as tfrecord
            raise PreparationError(f'{task}: cannot read split {split!r} of {name} in '
                                   f'{tfds_dir} ({one_line(err)})') from None
    return data


def save_image(array, path, image_format):
    image = Image.fromarray(np.ascontiguousarray(array))
    if image_format == 'png':
        image.save(path, format='PNG', compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(path, format='JPEG', quality=JPEG_QUALITY)


def write_split(task, source, data, split, out_dir, image_format, pool, progress):
    """Writes one VTAB-1k split's images; returns its list lines."""
    piece = source.splits[split]
    tfds_split = data[piece.split]
    start, stop = piece.bounds(len(tfds_split))
    num_classes = VTAB_TASKS[task][1]
    ext = 'png' if image_format == 'png' else 'jpg'
    os.makedirs(osp.join(out_dir, 'images', split))

    def write_one(index, example):
        label = source.label(example)
        if not 0 <= label < num_classes:
            raise PreparationError(
                f'{task}: {piece.split}[{index}] gives label {label}, outside 0..'
                f'{num_classes - 1} ({source.label_rule()}); is this {source.tfds_name} '
                f'{source.version} as tfds publishes it?')
        relative = f'images/{split}/{piece.split}_{index:07d}.{ext}'
        save_image(source.image(example), osp.join(out_dir, relative), image_format)
        return f'{relative} {label}\n'

    lines = []
    for chunk_start in range(start, stop, FETCH_CHUNK):
        indices = list(range(chunk_start, min(chunk_start + FETCH_CHUNK, stop)))
        # Read (and decode) in this thread; the workers derive, encode and write.
        examples = [tfds_split[index] for index in indices]
        lines += pool.map(write_one, indices, examples)
        progress.update(len(indices))
    return lines


def split_origin(source, split, tfds_sizes):
    """Where a VTAB-1k split comes from, in tfds' slicing syntax (for the manifest)."""
    if split == 'train800val200':
        return ' + '.join(split_origin(source, part, tfds_sizes) for part in ('train800', 'val200'))
    piece = source.splits[split]
    return piece.describe(tfds_sizes[piece.split])


def convert_task(root, task, source, tfds, tfds_dir, manual_dir, image_format, num_workers,
                 log):
    """Writes ``<root>/<task>``; returns 'skipped' when it is already complete."""
    final_dir = osp.join(root, task)
    if osp.isdir(final_dir):
        manifest = read_manifest(final_dir)
        if manifest is None:
            raise PreparationError(
                f'{final_dir} exists without a manifest.json, so it was not written by this '
                f'converter: move it away (or check it with --verify), then run again')
        log(f'{task}: complete ({manifest.get("image_format")}), skipped')
        return 'skipped'
    data = open_tfds_splits(task, source, tfds, tfds_dir, manual_dir)
    tfds_sizes = {split: len(examples) for split, examples in data.items()}
    mismatches = [f'{split} has {size} examples, VPT\'s had {source.tfds_sizes.get(split)}'
                  for split, size in tfds_sizes.items() if size != source.tfds_sizes.get(split)]
    if mismatches:
        log(f'warning: {task}: {source.tfds_name} {source.version}: {"; ".join(mismatches)}: '
            f'the splits will not be VPT\'s')
    total = sum(stop - start for start, stop in (
        piece.bounds(tfds_sizes[piece.split]) for piece in source.splits.values()))
    from tqdm import tqdm  # the data extra's (--verify does without it)
    with staged_folder(final_dir) as out_dir, \
            concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool, \
            tqdm(total=total, desc=task, unit='img', dynamic_ncols=True) as progress:
        lines = {split: write_split(task, source, data, split, out_dir, image_format, pool,
                                    progress)
                 for split in ('train800', 'val200', 'test')}
        lines['train800val200'] = lines['train800'] + lines['val200']
        for split in VTAB_SPLITS:
            with open(osp.join(out_dir, f'{split}.txt'), 'w') as f:
                f.writelines(lines[split])
        write_manifest(out_dir, dict(
            benchmark='vtab-1k', task=task, group=VTAB_TASKS[task][0],
            num_classes=VTAB_TASKS[task][1],
            source=dict(tfds_name=source.tfds_name, version=source.version,
                        vpt_version=source.vpt_version, version_note=source.version_note,
                        tensorflow_datasets=tfds.__version__, split_sizes=tfds_sizes,
                        vpt_split_sizes=source.tfds_sizes, matches_vpt_sizes=not mismatches),
            label=source.label_rule(),
            image_format=image_format,
            lossless=image_format == 'png',
            splits={split: dict(count=len(lines[split]),
                                tfds=split_origin(source, split, tfds_sizes),
                                classes=len({line.rsplit(' ', 1)[1] for line in lines[split]}))
                    for split in VTAB_SPLITS},
            list_sha256={f'{split}.txt': sha256_file(osp.join(out_dir, f'{split}.txt'))
                         for split in VTAB_SPLITS}))
    return 'converted'


def convert_vtab(root, tasks, tfds_dir, manual_dir=None, image_format='png', num_workers=4,
                 log=print, sources=None):
    """Converts ``tasks`` (canonical VTAB-1k names) into ``root``; returns
    ``{task: 'converted' | 'skipped'}``. ``sources`` replaces :data:`VTAB_SOURCES` (tests)."""
    if image_format not in ('png', 'jpeg'):
        raise PreparationError(f'image format {image_format!r}: choose png or jpeg')
    sources = VTAB_SOURCES if sources is None else sources
    tfds = import_tfds()
    manual_dir = manual_dir or osp.join(tfds_dir, 'downloads', 'manual')
    check_before_downloading(root, tasks, sources, tfds, tfds_dir, manual_dir)
    os.makedirs(root, exist_ok=True)
    if image_format == 'jpeg':
        log(f'note: JPEG (quality {JPEG_QUALITY}) is lossy: the pixels will differ from '
            f'tfds\', which VPT trained on; PNG (the default) keeps them exactly')
    return {task: convert_task(root, task, sources[task], tfds, tfds_dir, manual_dir,
                               image_format, num_workers, log)
            for task in tasks}
