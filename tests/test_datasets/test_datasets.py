"""VTAB-1k, FGVC and list-file datasets on data generated in the real on-disk formats."""
import os
import os.path as osp

import pytest

from mmvpt.datasets import FGVC, VTAB_TASKS, ListFileDataset, VTAB1k
from mmvpt.testing import make_fgvc_task, make_vtab_task

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]


@pytest.fixture(autouse=True)
def mmpretrain_scope():
    """The pipeline's transforms are mmpretrain's, whatever scope an earlier test left."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


@pytest.fixture(scope='module')
def vtab_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('vtab-1k'))
    make_vtab_task(root, 'cifar100', num_classes=4, num_train=12, num_val=4, num_test=6)  # alias
    make_vtab_task(root, 'dtd', num_classes=4, num_train=8, num_val=4, num_test=4)
    return root


def test_vtab_tasks_table():
    assert len(VTAB_TASKS) == 19
    groups = [group for group, _, _ in VTAB_TASKS.values()]
    counts = [groups.count(g) for g in ('natural', 'specialized', 'structured')]
    assert counts == [7, 4, 8]
    assert VTAB_TASKS['sun397'][1] == 397 and VTAB_TASKS['smallnorb_ele'][1] == 9


def test_vtab_splits_aliases_and_samples(vtab_root):
    sizes = {split: len(VTAB1k(vtab_root, 'cifar', split=split, pipeline=PIPELINE))
             for split in ('train800', 'val200', 'train800val200', 'test')}
    assert sizes == dict(train800=12, val200=4, train800val200=16, test=6)
    dataset = VTAB1k(vtab_root, 'cifar', split='train800', pipeline=PIPELINE)
    assert dataset.task == 'cifar' and dataset.group == 'natural'
    classes = list(dataset.metainfo['classes'])
    assert classes[:3] == ['0', '1', '2'] and len(classes) == 100
    info = dataset.get_data_info(5)
    assert info['gt_label'] == 5 % 4
    assert info['img_path'] == osp.join(vtab_root, 'cifar100', 'images/train800/000005.jpg')
    item = dataset[5]
    assert tuple(item['inputs'].shape) == (3, 32, 32) and item['data_samples'].gt_label.item() == 1
    assert len(VTAB1k(vtab_root, 'dtd', split='test')) == 4


def test_vtab_bad_input_names_the_problem(vtab_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='svhn'):
        VTAB1k(vtab_root, 'svhn')
    with pytest.raises(ValueError, match="unknown VTAB-1k task 'imagenet'"):
        VTAB1k(vtab_root, 'imagenet')
    with pytest.raises(ValueError, match="split='train'"):
        VTAB1k(vtab_root, 'dtd', split='train')
    task = make_vtab_task(str(tmp_path), 'kitti', num_classes=4, num_train=4, num_val=2, num_test=2)
    with open(osp.join(task, 'test.txt'), 'a') as f:
        f.write('images/test/000000.jpg 4\n')  # kitti has 4 classes: 0..3
    with pytest.raises(ValueError, match=r'test\.txt:3: label 4 outside the class range 0\.\.3'):
        VTAB1k(str(tmp_path), 'kitti', split='test')
    with open(osp.join(task, 'val200.txt'), 'w') as f:
        f.write('images/val200/000000.jpg\n')
    with pytest.raises(ValueError, match=r'val200\.txt:1: expected "relative/path label"'):
        VTAB1k(str(tmp_path), 'kitti', split='val200')
    os.remove(osp.join(task, 'train800.txt'))
    with pytest.raises(FileNotFoundError, match=r'kitti/train800\.txt does not exist'):
        VTAB1k(str(tmp_path), 'kitti', split='train800')


@pytest.mark.parametrize('task,folder,image_root', [('cub', 'CUB_200_2011', 'images'),
                                                    ('dogs', 'Stanford-dogs', 'Images'),
                                                    ('cars', 'cars', '')])
def test_fgvc_json_splits_remap_and_image_roots(tmp_path, task, folder, image_root):
    task_dir = make_fgvc_task(str(tmp_path), task, folder=folder, class_ids=(3, 7, 11, 20))
    train = FGVC(str(tmp_path), task, split='train', pipeline=PIPELINE)
    assert len(train) == 16
    labels = sorted({train.get_data_info(i)['gt_label'] for i in range(len(train))})
    assert labels == [0, 1, 2, 3]  # ids 3, 7, 11, 20 through their sorted set
    info = train.get_data_info(1)
    assert info['gt_label'] == 1  # class id 7
    assert info['img_path'] == osp.join(task_dir, image_root, '007.class/train_0001.jpg')
    assert osp.isfile(info['img_path'])
    assert len(FGVC(str(tmp_path), task, split='trainval')) == 24
    assert tuple(train[0]['inputs'].shape) == (3, 32, 32)


def test_fgvc_bad_input_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match='CUB_200_2011'):
        FGVC(str(tmp_path), 'cub')
    make_fgvc_task(str(tmp_path), 'flowers', class_ids=tuple(range(0, 206, 2)), num_train=103,
                   size=8)  # 103 class ids for 102 classes
    with pytest.raises(ValueError, match='103 class ids .* flowers has 102 classes'):
        FGVC(str(tmp_path), 'flowers')
    task_dir = make_fgvc_task(str(tmp_path), 'nabirds')
    os.remove(osp.join(task_dir, 'val.json'))
    with pytest.raises(FileNotFoundError, match=r'nabirds/val\.json does not exist'):
        FGVC(str(tmp_path), 'nabirds', split='trainval')
    with pytest.raises(ValueError, match="unknown FGVC task 'birds'"):
        FGVC(str(tmp_path), 'birds')


def test_list_file_dataset_for_your_own_data(tmp_path):
    task_dir = make_vtab_task(str(tmp_path), 'mine', num_classes=3, num_train=6, num_val=3,
                              num_test=3)
    dataset = ListFileDataset(task_dir, 'train800', num_classes=3, classes=['a', 'b', 'c'])
    assert len(dataset) == 6 and list(dataset.metainfo['classes']) == ['a', 'b', 'c']
    with pytest.raises(ValueError, match='2 class names given for num_classes=3'):
        ListFileDataset(task_dir, 'train800', num_classes=3, classes=['a', 'b'])
    with pytest.raises(FileNotFoundError, match='nowhere'):
        ListFileDataset(str(tmp_path / 'nowhere'), 'train', num_classes=3)
