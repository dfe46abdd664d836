"""Small FGVC datasets in their official archives' layouts (file lists, MATLAB files, image
folders), extracted, for testing ``tools/dataset_converters/fgvc.py`` without downloads.

Each writer takes ``classes``: ``[(class id, train images, test images), ...]`` (Oxford
Flowers: ``(class id, train, val, test)``, it has an official val split) and returns the
dataset folder and ``{image path under the image root: (class id, official split)}``.
"""
import io
import os
import os.path as osp
import uuid

import numpy as np
from PIL import Image

from .synthetic import synthetic_image


def jpeg_bytes(class_index, num_classes, rng, size=8):
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(class_index, num_classes, size, rng)).save(buffer, 'JPEG')
    return buffer.getvalue()


def write_image(path, data):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def split_list(classes, splits=('train', 'test')):
    """[(class index, class id, split), ...], splits interleaved as in the real lists."""
    entries = []
    for index, (class_id, *counts) in enumerate(classes):
        for split, count in zip(splits, counts):
            entries += [(index, class_id, split)] * count
    order = np.random.default_rng(len(entries)).permutation(len(entries))
    return [entries[i] for i in order]


def write_id_tables(folder, rows):
    """images.txt, image_class_labels.txt, train_test_split.txt of (id, path, class, split)."""
    with open(osp.join(folder, 'images.txt'), 'w') as images, \
            open(osp.join(folder, 'image_class_labels.txt'), 'w') as labels, \
            open(osp.join(folder, 'train_test_split.txt'), 'w') as split_file:
        for image_id, path, class_id, split in rows:
            images.write(f'{image_id} {path}\n')
            labels.write(f'{image_id} {class_id}\n')
            split_file.write(f'{image_id} {int(split == "train")}\n')


def write_cub(root, classes, seed=0):
    """CUB_200_2011/: images/NNN.Name/*.jpg and the three id tables (ids 1, 2, ...)."""
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'CUB_200_2011')
    rows, official = [], {}
    for number, (index, class_id, split) in enumerate(split_list(classes), 1):
        path = f'{class_id:03d}.Bird_{class_id}/Bird_{class_id}_{number:04d}.jpg'
        write_image(osp.join(folder, 'images', path), jpeg_bytes(index, len(classes), rng))
        rows.append((number, path, class_id, split))
        official[path] = (class_id, split)
    write_id_tables(folder, rows)
    with open(osp.join(folder, 'classes.txt'), 'w') as f:
        f.writelines(f'{class_id} {class_id:03d}.Bird_{class_id}\n' for class_id, *_ in classes)
    return folder, official


def write_nabirds(root, classes, seed=0):
    """nabirds/: images/NNNN/<uuid>.jpg and the three id tables keyed by uuids."""
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'nabirds')
    rows, official = [], {}
    for index, class_id, split in split_list(classes):
        image_id = uuid.UUID(int=int(rng.integers(0, 2**63)))
        path = f'{class_id:04d}/{image_id.hex}.jpg'
        write_image(osp.join(folder, 'images', path), jpeg_bytes(index, len(classes), rng))
        rows.append((str(image_id), path, class_id, split))
        official[path] = (class_id, split)
    write_id_tables(folder, rows)
    return folder, official


def write_flowers(root, classes, seed=0):
    """OxfordFlower/: jpg/image_NNNNN.jpg, imagelabels.mat (labels, 1 x N) and setid.mat
    (trnid, valid, tstid: 1-based image numbers)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'OxfordFlower')
    labels, numbers, official = [], dict(train=[], val=[], test=[]), {}
    for number, (index, class_id, split) in enumerate(
            split_list(classes, ('train', 'val', 'test')), 1):
        path = f'jpg/image_{number:05d}.jpg'
        write_image(osp.join(folder, path), jpeg_bytes(index, len(classes), rng))
        labels.append(class_id)
        numbers[split].append(number)
        official[path] = (class_id, split)
    savemat(osp.join(folder, 'imagelabels.mat'), dict(labels=np.array([labels], np.uint8)))
    savemat(osp.join(folder, 'setid.mat'),
            {key: np.array([numbers[split]], np.uint16)
             for key, split in (('trnid', 'train'), ('valid', 'val'), ('tstid', 'test'))})
    return folder, official


def write_dogs(root, classes, seed=0):
    """Stanford-dogs/: Images/<wnid>-<breed>/<wnid>_<n>.jpg and train_list.mat / test_list.mat
    (file_list and annotation_list: N x 1 cells, labels: N x 1)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'Stanford-dogs')
    lists, official = dict(train=[], test=[]), {}
    for number, (index, class_id, split) in enumerate(split_list(classes), 1):
        wnid = f'n02{class_id:06d}'
        path = f'{wnid}-Breed_{class_id}/{wnid}_{number}.jpg'
        write_image(osp.join(folder, 'Images', path), jpeg_bytes(index, len(classes), rng))
        lists[split].append((path, class_id))
        official[path] = (class_id, split)
    for split, entries in lists.items():
        files = np.empty((len(entries), 1), dtype=object)
        annotations = np.empty((len(entries), 1), dtype=object)
        for row, (path, _) in enumerate(entries):
            files[row, 0] = np.array([path])
            annotations[row, 0] = np.array([path[:-len('.jpg')]])
        savemat(osp.join(folder, f'{split}_list.mat'),
                dict(file_list=files, annotation_list=annotations,
                     labels=np.array([[label] for _, label in entries], np.uint8)))
    return folder, official


def cars_annotations(entries, with_class=True):
    fields = ['bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2'] + ['class'] * with_class + ['fname']
    records = np.zeros((1, len(entries)), dtype=[(name, 'O') for name in fields])
    for column, (fname, class_id) in enumerate(entries):
        values = dict(bbox_x1=1, bbox_y1=1, bbox_x2=7, bbox_y2=7, fname=fname)
        if with_class:
            values['class'] = class_id
        for name in fields:
            records[0, column][name] = np.array([[values[name]]]) if name != 'fname' else \
                np.array([values[name]])
    return records


def write_cars(root, classes, seed=0):
    """Stanford-cars/: cars_train/NNNNN.jpg, cars_test/NNNNN.jpg, devkit/ (cars_meta.mat,
    cars_train_annos.mat, cars_test_annos.mat without classes) and
    cars_test_annos_withlabels.mat: struct arrays ``annotations`` (bbox_*, class, fname)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'Stanford-cars')
    lists, official = dict(train=[], test=[]), {}
    for index, class_id, split in split_list(classes):
        fname = f'{len(lists[split]) + 1:05d}.jpg'
        write_image(osp.join(folder, f'cars_{split}', fname), jpeg_bytes(index, len(classes), rng))
        lists[split].append((fname, class_id))
        official[f'cars_{split}/{fname}'] = (class_id, split)
    os.makedirs(osp.join(folder, 'devkit'), exist_ok=True)
    names = np.empty((1, max(c for c, *_ in classes)), dtype=object)
    names[0, :] = [f'Car {i + 1}' for i in range(names.shape[1])]
    savemat(osp.join(folder, 'devkit', 'cars_meta.mat'), dict(class_names=names))
    savemat(osp.join(folder, 'devkit', 'cars_train_annos.mat'),
            dict(annotations=cars_annotations(lists['train'])))
    savemat(osp.join(folder, 'devkit', 'cars_test_annos.mat'),
            dict(annotations=cars_annotations(lists['test'], with_class=False)))
    savemat(osp.join(folder, 'cars_test_annos_withlabels.mat'),
            dict(annotations=cars_annotations(lists['test'])))
    return folder, official


FGVC_ARCHIVE_WRITERS = dict(cub=write_cub, nabirds=write_nabirds, flowers=write_flowers,
                            dogs=write_dogs, cars=write_cars)


def write_fgvc_archive(root, task, classes, seed=0):
    """The extracted archive of FGVC ``task`` under ``root``; see the module's docstring."""
    return FGVC_ARCHIVE_WRITERS[task](root, classes, seed)
