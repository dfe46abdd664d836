"""Bad data is named before or when it is met: missing, empty and undecodable images with
their list file and line (FGVC: JSON file and key), also from DataLoader workers; ADE20K
images without annotations and annotations without images; num_classes smaller than the
data's labels; and a later run failing on bad data leaves an earlier checkpoint as it was."""
import os
import os.path as osp
import random
import shutil
import uuid

import numpy as np
import pytest
import torch
from mmengine.dataset import RepeatDataset, pseudo_collate
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmvpt.apis import prepare_config
from mmvpt.datasets import FGVC, ListFileDataset, VTAB1k
from mmvpt.engine.hooks import DataCheckHook, DataError
from mmvpt.engine.hooks.data_check_hook import check_datasets
from mmvpt.testing import make_ade20k, make_fgvc_task, make_vtab_task

from tests.conftest import DEMO_CONFIG, ROOT, run_tool
from tests.helpers.tiny_models import SEG_ARCH

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]


def image(task_dir, split, index):
    return osp.join(task_dir, 'images', split, f'{index:06d}.jpg')


def write_random_bytes(path, size=600):
    with open(path, 'wb') as f:
        f.write(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())


# ---- missing and empty images: named when the list loads ---------------------------------


def test_missing_and_empty_images_fail_when_the_list_loads(tmp_path):
    task = make_vtab_task(str(tmp_path), 'dtd', num_classes=4, num_train=6, num_val=3,
                          num_test=4, size=8)
    os.remove(image(task, 'test', 1))  # test.txt line 2
    open(image(task, 'test', 3), 'w').close()  # line 4, 0 bytes
    with pytest.raises(DataError) as error:
        VTAB1k(str(tmp_path), 'dtd', split='test')
    message = str(error.value)
    assert 'VTAB1k: 2 of the 4 listed samples cannot be read' in message
    assert (f'{task}/test.txt:2: image {image(task, "test", 1)} does not exist\n'
            f'  {task}/test.txt:4: image {image(task, "test", 3)} is empty (0 bytes)') in message
    assert 'test.txt:1:' not in message and 'test.txt:3:' not in message
    # the joined split names the joined list's own line: 6 train lines, then val200's
    os.remove(image(task, 'val200', 2))
    with pytest.raises(DataError, match=r'train800val200\.txt:9: image .*/val200/000002\.jpg '
                                        'does not exist'):
        VTAB1k(str(tmp_path), 'dtd', split='train800val200')
    assert len(VTAB1k(str(tmp_path), 'dtd', split='train800')) == 6  # untouched split loads


def test_list_file_dataset_names_a_missing_image_of_your_own_data(tmp_path):
    task = make_vtab_task(str(tmp_path), 'mine', num_classes=3, num_train=5, num_val=2,
                          num_test=2, size=8)
    os.remove(image(task, 'train800', 4))
    with pytest.raises(DataError) as error:
        ListFileDataset(task, 'train800', num_classes=3)
    assert (f'{task}/train800.txt:5: image {task}/images/train800/000004.jpg does not exist'
            in str(error.value))


def test_fgvc_names_the_json_file_and_key(tmp_path):
    task_dir = make_fgvc_task(str(tmp_path), 'cub', folder='CUB_200_2011', size=8)
    os.remove(osp.join(task_dir, 'images', '007.class', 'train_0001.jpg'))
    open(osp.join(task_dir, 'images', '011.class', 'val_0002.jpg'), 'w').close()
    with pytest.raises(DataError) as error:
        FGVC(str(tmp_path), 'cub', split='trainval')
    message = str(error.value)
    assert 'FGVC: 2 of the 24 listed samples cannot be read' in message
    assert (f'{task_dir}/train.json, key "007.class/train_0001.jpg": image '
            f'{task_dir}/images/007.class/train_0001.jpg does not exist') in message
    assert (f'{task_dir}/val.json, key "011.class/val_0002.jpg": image '
            f'{task_dir}/images/011.class/val_0002.jpg is empty (0 bytes)') in message
    assert len(FGVC(str(tmp_path), 'cub', split='test')) == 8  # test.json's images are fine


# ---- undecodable images: named when the sample is loaded, also in a worker ---------------


@pytest.fixture
def undecodable_task(tmp_path):
    """A task whose test.txt line 3 is a .jpg of random bytes and line 5 a JPEG cut after
    its first 100 bytes."""
    task = make_vtab_task(str(tmp_path), 'svhn', num_classes=4, num_train=4, num_val=2,
                          num_test=6, size=16)
    write_random_bytes(image(task, 'test', 2))
    with open(image(task, 'test', 4), 'rb') as f:
        head = f.read(100)
    with open(image(task, 'test', 4), 'wb') as f:
        f.write(head)
    return task


def test_undecodable_image_is_named_when_loaded(undecodable_task):
    task = undecodable_task
    dataset = VTAB1k(osp.dirname(task), 'svhn', split='test', pipeline=PIPELINE)  # loads
    assert tuple(dataset[1]['inputs'].shape) == (3, 16, 16)
    with pytest.raises(DataError) as error:
        dataset[2]
    assert str(error.value).startswith(
        f'{task}/test.txt:3: sample {image(task, "test", 2)} failed to load: ')
    assert error.value.__cause__ is not None  # the decoder's own error stays chained
    with pytest.raises(DataError, match=r'test\.txt:5: sample .*/000004\.jpg failed to load'):
        dataset[4]


@pytest.mark.parametrize('num_workers', [0, 2])
def test_undecodable_image_is_named_through_a_data_loader(undecodable_task, num_workers):
    task = undecodable_task
    dataset = VTAB1k(osp.dirname(task), 'svhn', split='test', pipeline=PIPELINE)
    loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, collate_fn=pseudo_collate)
    with pytest.raises(DataError) as error:
        for _ in loader:
            pass
    message = str(error.value)  # what the user sees in the main process
    assert f'{task}/test.txt:3: sample {image(task, "test", 2)} failed to load' in message
    if num_workers:
        assert 'Caught DataError in DataLoader worker process' in message


def test_fgvc_undecodable_image_names_json_file_and_key(tmp_path):
    task_dir = make_fgvc_task(str(tmp_path), 'dogs', folder='Stanford-dogs', size=8)
    write_random_bytes(osp.join(task_dir, 'Images', '020.class', 'test_0003.jpg'))
    dataset = FGVC(str(tmp_path), 'dogs', split='test', pipeline=PIPELINE)
    with pytest.raises(DataError) as error:
        dataset[3]
    assert str(error.value).startswith(
        f'{task_dir}/test.json, key "020.class/test_0003.jpg": sample '
        f'{task_dir}/Images/020.class/test_0003.jpg failed to load: ')


# ---- the hook: ADE20K pairs, num_classes, other datasets' files ----------------------------


def list_file_config(tmp_path, task_dir, extra='', hooks=''):
    """The demo config on ``task_dir`` through mmvpt.ListFileDataset, with the data check
    and ``hooks`` (more ``name=dict(...)`` entries) in default_hooks."""
    pipeline = ("[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)), "
                "dict(type='PackInputs')]")
    lines = [f'_base_ = [{DEMO_CONFIG!r}]',
             f"default_hooks = dict(data_check=dict(type='mmvpt.DataCheckHook'), {hooks})"]
    for loader, split in (('train', 'train800'), ('val', 'val200'), ('test', 'test')):
        lines.append(f"{loader}_dataloader = dict(dataset=dict(_delete_=True, "
                     f"type='mmvpt.ListFileDataset', data_root={task_dir!r}, split={split!r}, "
                     f"num_classes=4, pipeline={pipeline}))")
    path = tmp_path / f'cfg_{uuid.uuid4().hex[:6]}.py'
    path.write_text('\n'.join(lines) + '\n' + extra)
    return str(path)


def make_runner(config, work_dir, **options):
    cfg = prepare_config(config, options or None, str(work_dir))
    cfg.experiment_name = uuid.uuid4().hex  # own logger and message hub per runner
    return Runner.from_cfg(cfg)


def checkpoints(work_dir):
    return sorted(name for name in os.listdir(work_dir) if name.endswith('.pth'))


def test_num_classes_smaller_than_a_label_fails_before_training(tmp_path):
    # train labels are 0..2; val200.txt line 4 holds label 3
    task = make_vtab_task(str(tmp_path / 'data'), 'mine', num_classes=4, num_train=3,
                          num_val=4, num_test=2, size=32)
    config = list_file_config(tmp_path, task)
    runner = make_runner(config, tmp_path / 'work', **{'model.head.num_classes': 3,
                                                       'data_preprocessor.num_classes': 3})
    with pytest.raises(DataError) as error:
        runner.train()
    message = str(error.value)
    assert (f'the val data has label 3 at {task}/val200.txt:4 ({image(task, "val200", 3)}), '
            'so num_classes must be at least 4') in message
    assert message.endswith('the config has\n  model.head.num_classes=3\n'
                            '  data_preprocessor.num_classes=3')
    assert runner.iter == 0 and checkpoints(tmp_path / 'work') == []
    # only the key that is too small is named
    runner = make_runner(config, tmp_path / 'work2', **{'model.head.num_classes': 3})
    with pytest.raises(DataError) as error:
        runner.train()
    assert 'model.head.num_classes=3' in str(error.value)
    assert 'data_preprocessor' not in str(error.value)


def test_good_data_passes_without_drawing_random_numbers(tmp_path):
    task = make_vtab_task(str(tmp_path / 'data'), 'mine', num_classes=4, num_train=8,
                          num_val=4, num_test=4, size=32)
    runner = make_runner(list_file_config(tmp_path, task), tmp_path / 'work')
    hook = next(h for h in runner.hooks if isinstance(h, DataCheckHook))
    datasets = runner.train_dataloader.dataset, runner.val_dataloader.dataset
    runner.test_dataloader  # noqa: B018  (built before the random state is taken)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    hook.before_train(runner)
    hook.before_test(runner)
    assert random.getstate() == states[0]
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(after, states[1]))
    assert torch.equal(torch.get_rng_state(), states[2])
    assert [len(d) for d in datasets] == [8, 4]


def test_labels_inside_dataset_wrappers_are_checked(tmp_path):
    small = make_vtab_task(str(tmp_path), 'small', num_classes=3, num_train=3, num_val=1,
                           num_test=1, size=8)
    large = make_vtab_task(str(tmp_path), 'large', num_classes=5, num_train=5, num_val=1,
                           num_test=1, size=8)
    # one class list for both (ConcatDataset wants equal metainfo); labels 0..2 and 0..4.
    # MMEngine's wrappers take other wrappers as configs only.
    large_balanced = dict(type='mmengine.ClassBalancedDataset', oversample_thr=0.5,
                          dataset=ListFileDataset(large, 'train800', num_classes=5))
    wrapped = RepeatDataset(dict(type='mmengine.ConcatDataset', datasets=[
        ListFileDataset(small, 'train800', num_classes=5), large_balanced]), times=2)
    assert type(wrapped.dataset.datasets[1]).__name__ == 'ClassBalancedDataset'
    cfg = dict(model=dict(head=dict(num_classes=4)))
    with pytest.raises(DataError, match=rf'label 4 at {large}/train800\.txt:5 .*\n'
                                        r'  model\.head\.num_classes=4$'):
        check_datasets(cfg, dict(train=wrapped))
    check_datasets(dict(model=dict(head=dict(num_classes=5))), dict(train=wrapped))


def test_other_datasets_missing_images_are_named_by_the_hook(tmp_path):
    from mmpretrain.datasets import CustomDataset
    task = make_vtab_task(str(tmp_path), 'mine', num_classes=3, num_train=4, num_val=1,
                          num_test=1, size=8)
    dataset = CustomDataset(data_root=task, ann_file='train800.txt', data_prefix='',
                            with_label=True)  # mmpretrain's: loads without looking at files
    os.remove(image(task, 'train800', 2))
    with pytest.raises(DataError) as error:
        check_datasets(dict(model=dict(head=dict(num_classes=3))), dict(train=dataset))
    assert (f'train dataset CustomDataset ({task}/train800.txt), sample 2: image '
            f'{image(task, "train800", 2)} does not exist') in str(error.value)


@pytest.fixture
def ade(tmp_path):
    return make_ade20k(str(tmp_path / 'ade'), num_train=4, num_val=3, size=(16, 24))


def ade_dataset(ade, split='training'):
    from mmseg.datasets import ADE20KDataset
    return ADE20KDataset(data_root=ade, data_prefix=dict(img_path=f'images/{split}',
                                                         seg_map_path=f'annotations/{split}'))


def seg_cfg(ade, work_dir=None):
    """The SETR ADE20K config (linear probing) at a tiny width, on the data in ``ade``."""
    cfg = prepare_config(osp.join(ROOT, 'configs/linear/setr_vit-l_ade20k.py'), work_dir=work_dir)
    cfg.model.backbone.update(arch_cfg=SEG_ARCH,
                              img_size=64, out_indices=(0, 1, 2, 3), init_cfg=None)
    for head in [cfg.model.decode_head, *cfg.model.auxiliary_head]:
        head.update(in_channels=32, channels=16)
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].update(num_workers=0, persistent_workers=False)
        cfg[f'{split}_dataloader'].dataset.data_root = ade
    return cfg


def test_ade20k_image_without_annotation_fails_before_training(ade, tmp_path):
    os.remove(osp.join(ade, 'annotations/training/ADE_train_00000002.png'))
    cfg = seg_cfg(ade, work_dir=str(tmp_path / 'work'))
    cfg.default_hooks.data_check = dict(type='mmvpt.DataCheckHook')
    cfg.experiment_name = uuid.uuid4().hex
    runner = Runner.from_cfg(cfg)
    with pytest.raises(DataError) as error:
        runner.train()
    assert (f'train dataset ADE20KDataset ({ade}), sample 1: image '
            f'{ade}/images/training/ADE_train_00000002.jpg has no annotation '
            f'({ade}/annotations/training/ADE_train_00000002.png does not exist)'
            ) in str(error.value)
    assert '1 problem(s) in the train data' in str(error.value)
    assert runner.iter == 0 and checkpoints(tmp_path / 'work') == []


def test_ade20k_annotation_without_image_is_named(ade):
    os.remove(osp.join(ade, 'images/validation/ADE_val_00000002.jpg'))
    with pytest.raises(DataError) as error:
        check_datasets(seg_cfg(ade),
                       dict(train=ade_dataset(ade), val=ade_dataset(ade, 'validation')))
    assert str(error.value) == (
        '1 problem(s) in the val data:\n'
        f'  val dataset ADE20KDataset ({ade}): annotation '
        f'{ade}/annotations/validation/ADE_val_00000002.png has no image '
        f'({ade}/images/validation/ADE_val_00000002.jpg does not exist)')


def test_segmentation_num_classes_smaller_than_the_classes(ade):
    cfg = seg_cfg(ade)
    datasets = dict(train=ade_dataset(ade), val=ade_dataset(ade, 'validation'))
    check_datasets(cfg, datasets)  # the config's 150 classes: passes
    cfg.model.decode_head.num_classes = 100
    cfg.model.auxiliary_head[1].num_classes = 149
    with pytest.raises(DataError) as error:
        check_datasets(cfg, datasets)
    assert str(error.value) == (
        f'num_classes too small for the data: the train dataset ADE20KDataset ({ade}) has '
        "150 classes (metainfo['classes']), so num_classes must be at least 150; the config has\n"
        '  model.decode_head.num_classes=100\n'
        '  model.auxiliary_head[1].num_classes=149')



def test_segmentation_datasets_inside_wrappers_are_checked(ade):
    def wrapped():
        return RepeatDataset(dict(type='mmengine.ConcatDataset', datasets=[
            ade_dataset(ade), ade_dataset(ade, 'validation')]), times=3)

    cfg = seg_cfg(ade)
    cfg.model.decode_head.num_classes = 100
    with pytest.raises(DataError, match=rf"ADE20KDataset \({ade}\) has 150 classes"):
        check_datasets(cfg, dict(train=wrapped()))
    cfg.model.decode_head.num_classes = 150
    os.remove(osp.join(ade, 'images/validation/ADE_val_00000003.jpg'))
    with pytest.raises(DataError, match=r'annotation .*/validation/ADE_val_00000003\.png has '
                                        r'no image'):
        check_datasets(cfg, dict(train=wrapped()))

# ---- nothing already written is lost ---------------------------------------------------------


def snapshot(work_dir):
    files = {}
    for folder, _, names in os.walk(work_dir):
        for name in names:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, work_dir)] = f.read()
    return files


def assert_kept(work_dir, before, config):
    after = snapshot(work_dir)
    # MMEngine dumps the config into the work dir on every run, by design
    for name, content in before.items():
        if name != osp.basename(config):
            assert after.get(name) == content, f'{name} changed or was removed'


@pytest.mark.tools
def test_a_later_run_failing_on_bad_data_keeps_the_earlier_checkpoint(tmp_path):
    task = make_vtab_task(str(tmp_path / 'data'), 'mine', num_classes=4, num_train=16,
                          num_val=8, num_test=4, size=32)
    config = list_file_config(tmp_path, task, 'train_cfg = dict(max_epochs=1, val_interval=1)\n',
                              hooks='checkpoint=dict(interval=1)')
    work = str(tmp_path / 'work')
    run_tool('train.py', config, '--work-dir', work)
    before = snapshot(work)
    assert 'epoch_1.pth' in before and 'last_checkpoint' in before
    resume = ['train.py', config, '--work-dir', work, '--resume', '--cfg-options',
              'train_cfg.max_epochs=2']

    # an undecodable image, met in a DataLoader worker after resuming
    good_image = image(task, 'train800', 5)
    shutil.copy(good_image, tmp_path / 'good.jpg')
    write_random_bytes(good_image)
    proc = run_tool(*resume, 'train_dataloader.num_workers=2', check=False)
    assert proc.returncode != 0
    assert f'{task}/train800.txt:6: sample {good_image} failed to load' in proc.stderr
    assert 'resumed epoch: 1' in proc.stdout + proc.stderr  # it did get as far as training
    assert_kept(work, before, config)
    shutil.copy(tmp_path / 'good.jpg', good_image)

    # num_classes smaller than the labels: the hook stops it before training
    proc = run_tool(*resume, 'model.head.num_classes=3', check=False)
    assert proc.returncode != 0
    assert (f'label 3 at {task}/train800.txt:4 ({image(task, "train800", 3)}), so num_classes '
            'must be at least 4; the config has\n  model.head.num_classes=3') in proc.stderr
    assert_kept(work, before, config)

    # a missing image: named when the list loads
    os.remove(image(task, 'val200', 1))
    proc = run_tool(*resume, check=False)
    assert proc.returncode != 0
    assert (f'{task}/val200.txt:2: image {image(task, "val200", 1)} does not exist'
            in proc.stderr)
    assert_kept(work, before, config)
