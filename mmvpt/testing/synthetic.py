"""A small, learnable image-classification task written in the VTAB-1k folder format.

Class ``c`` of ``K`` is a bright square whose position on a ring is set by ``c``, on a
noisy background of random colour, so a small ViT can learn it in a few CPU minutes while
chance stays at ``1/K``.
"""
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
