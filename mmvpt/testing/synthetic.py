"""A small, learnable image-classification task written in the VTAB-1k folder format.

Class ``c`` of ``K`` is a bright square whose position on a ring is set by ``c``, on a
noisy background of random colour, so a small ViT can learn it in a few CPU minutes while
chance stays at ``1/K``.
"""
import json
import math
import os
import os.path as osp

import numpy as np
from PIL import Image

VTAB_SPLITS = ('train800', 'val200', 'train800val200', 'test')


def synthetic_image(label, num_classes, size, rng, angle_offset=0.):
    """One ``size`` x ``size`` RGB image (uint8 HWC) of class ``label``."""
    image = rng.integers(0, 96, size=(size, size, 3), dtype=np.uint8)
    image[:] = image // 2 + rng.integers(0, 96, size=3, dtype=np.uint8)
    side = max(2, size // 4)
    angle = 2 * math.pi * label / num_classes + angle_offset
    radius = (size - side) / 2 - 1
    centre = (size - side) / 2
    top = int(round(centre - radius * math.cos(angle) + rng.integers(-1, 2)))
    left = int(round(centre + radius * math.sin(angle) + rng.integers(-1, 2)))
    top, left = np.clip([top, left], 0, size - side)
    image[top:top + side, left:left + side] = rng.integers(200, 256, size=3, dtype=np.uint8)
    return image


def make_vtab_task(root, task='synthetic', num_classes=4, num_train=800, num_val=200,
                   num_test=200, size=32, seed=0, ext='jpg', angle_offset=0.):
    """Writes ``<root>/<task>/images/<split>/*.<ext>`` and the four VTAB-1k list files
    (``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt``, one
    ``relative/path label`` per line). ``angle_offset`` turns the ring of positions, which
    makes a related task for transfer. Returns the task folder."""
    rng = np.random.default_rng(seed)
    task_dir = osp.join(root, task)
    lines = {}
    for split, count in (('train800', num_train), ('val200', num_val), ('test', num_test)):
        os.makedirs(osp.join(task_dir, 'images', split), exist_ok=True)
        lines[split] = []
        for i in range(count):
            label = i % num_classes
            rel_path = f'images/{split}/{i:06d}.{ext}'
            Image.fromarray(synthetic_image(label, num_classes, size, rng, angle_offset)).save(
                osp.join(task_dir, rel_path))
            lines[split].append(f'{rel_path} {label}\n')
    lines['train800val200'] = lines['train800'] + lines['val200']
    for split in VTAB_SPLITS:
        with open(osp.join(task_dir, f'{split}.txt'), 'w') as f:
            f.writelines(lines[split])
    return task_dir


# FGVC image roots inside the task folder, as the real datasets lay them out.
FGVC_IMAGE_ROOTS = dict(cub='images', nabirds='images', dogs='Images', cars='', flowers='')


def make_fgvc_task(root, task='cub', folder=None, class_ids=(3, 7, 11, 20), num_train=16,
                   num_val=8, num_test=8, size=32, seed=0):
    """Writes an FGVC task the way VPT's splits describe one: images under the dataset's
    own image root and ``{train,val,test}.json`` mapping ``relative/image/path`` to the
    original class id (``class_ids``, not contiguous, as in CUB or NABirds). Returns the
    task folder."""
    rng = np.random.default_rng(seed)
    task_dir = osp.join(root, folder or task)
    image_root = osp.join(task_dir, FGVC_IMAGE_ROOTS[task])
    for split, count in (('train', num_train), ('val', num_val), ('test', num_test)):
        annotations = {}
        for i in range(count):
            label = i % len(class_ids)
            rel_path = f'{class_ids[label]:03d}.class/{split}_{i:04d}.jpg'
            os.makedirs(osp.join(image_root, osp.dirname(rel_path)), exist_ok=True)
            Image.fromarray(synthetic_image(label, len(class_ids), size, rng)).save(
                osp.join(image_root, rel_path))
            annotations[rel_path] = class_ids[label]
        with open(osp.join(task_dir, f'{split}.json'), 'w') as f:
            json.dump(annotations, f)
    return task_dir


# Three ADE20K classes (ids as in the annotations: 0 is "other", ignored with
# reduce_zero_label) and the colour each is painted in.
ADE_COLOURS = {1: (70, 130, 220), 2: (60, 180, 60), 3: (220, 40, 40)}


def make_ade20k(root, num_train=4, num_val=2, size=(64, 96), seed=0):
    """Writes a tiny dataset in mmseg's ADE20K layout (``ADEChallengeData2016/images/
    {training,validation}/*.jpg`` and ``annotations/.../*.png``): a band of class 1 on top,
    class 2 below, a square of class 3 at a random place, a few pixels of 0 ("other").
    Returns the ``ADEChallengeData2016`` folder."""
    rng = np.random.default_rng(seed)
    base = osp.join(root, 'ADEChallengeData2016')
    height, width = size
    for split, count, prefix in (('training', num_train, 'ADE_train'),
                                 ('validation', num_val, 'ADE_val')):
        os.makedirs(osp.join(base, 'images', split), exist_ok=True)
        os.makedirs(osp.join(base, 'annotations', split), exist_ok=True)
        for i in range(count):
            label = np.full((height, width), 2, np.uint8)
            label[:int(rng.integers(height // 4, height // 2))] = 1
            side = height // 4
            top, left = rng.integers(0, height - side), rng.integers(0, width - side)
            label[top:top + side, left:left + side] = 3
            label[rng.random((height, width)) < 0.02] = 0
            image = rng.integers(0, 40, (height, width, 3)).astype(np.int16)
            for class_id, colour in ADE_COLOURS.items():
                image[label == class_id] += np.array(colour, np.int16)
            name = f'{prefix}_{i + 1:08d}'
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                osp.join(base, 'images', split, f'{name}.jpg'))
            Image.fromarray(label).save(osp.join(base, 'annotations', split, f'{name}.png'))
    return base
