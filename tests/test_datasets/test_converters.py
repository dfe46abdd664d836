"""tools/dataset_converters/: VTAB-1k from tensorflow-datasets (its builders run on tfds' own
mock data, and a small real builder is prepared and read end to end) and FGVC from small
archives in each dataset's official layout; the folders load through mmvpt.VTAB1k and
mmvpt.FGVC, and --verify checks folders of VPT's real sizes.

tensorflow-datasets is the data extra (requirements/extras/data.txt), which tools/env.sh
installs into the test environment."""
import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import io
import json
import os
import os.path as osp
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mmvpt.datasets import FGVC, VTAB_TASKS, VTAB1k
from mmvpt.datasets.preparation import (
    FGVC_SOURCES,
    VTAB_SOURCES,
    PreparationError,
    Slice,
    convert_fgvc,
    convert_vtab,
    downloads,
    read_manifest,
    verify_fgvc,
    verify_vtab,
    vtab_split_sizes,
)
from mmvpt.datasets.preparation import vtab as vtab_preparation
from mmvpt.datasets.preparation.fgvc import stratified_val
from mmvpt.testing import make_vtab_task, synthetic_image
from mmvpt.testing.fgvc_archives import write_fgvc_archive

from tests.conftest import ROOT, tool_env

MOCK_EXAMPLES = 20  # per tfds split; the tasks take 3 for train800 and 2 for val200 of them
SMALL = dict(train800=3, val200=2)
PIPELINE = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]

# VTAB-1k's split sizes (train800 / val200 / train800val200 are 800 / 200 / 1000 for all):
# the test sets of VTAB-1k as NOAH's and VPT's runs have them.
VTAB_TEST_SIZES = dict(
    cifar=10000, caltech101=6084, dtd=1880, oxford_flowers102=6149, oxford_iiit_pet=3669,
    svhn=26032, sun397=21750, patch_camelyon=32768, eurosat=5400, resisc45=6300,
    diabetic_retinopathy=42670, clevr_count=15000, clevr_dist=15000, dmlab=22735, kitti=711,
    dsprites_loc=73728, dsprites_ori=73728, smallnorb_azi=12150, smallnorb_ele=12150)


@pytest.fixture(scope='module')
def tfds():
    try:
        import tensorflow_datasets
    except ImportError as err:
        pytest.fail(f'tensorflow-datasets is missing ({err}): `source tools/env.sh` installs '
                    f'requirements/extras/data.txt')
    return tensorflow_datasets


@pytest.fixture(autouse=True)
def mmpretrain_scope():
    """The pipeline's transforms are mmpretrain's, whatever scope an earlier test left."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


def load_tool(name):
    """tools/dataset_converters/<name>.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(
        f'converter_{name}', osp.join(ROOT, 'tools', 'dataset_converters', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def vtab_tool():
    return load_tool('vtab1k')


@pytest.fixture(scope='module')
def fgvc_tool():
    return load_tool('fgvc')


def small(source, **counts):
    """``source`` with train800 / val200 cut to ``counts`` (default 3 / 2)."""
    counts = {**SMALL, **counts}
    splits = {name: dataclasses.replace(piece, count=counts.get(name, piece.count))
              for name, piece in source.splits.items()}
    return dataclasses.replace(source, splits=splits)


SMALL_SOURCES = {task: small(source) for task, source in VTAB_SOURCES.items()}


def one_object_count_per_scene(example, rng):
    """tfds' mock gives each field of a sequence its own random length (5..49): a CLEVR scene
    of 46 objects, KITTI objects whose types outnumber their locations. Here every
    ``objects`` field of an example has one length, 3..10 (CLEVR's range)."""
    count = int(rng.integers(3, 11))
    example['objects'] = {key: value[:count] for key, value in example['objects'].items()}


def binary_mask(example, rng):
    """dSprites' images are 0/1 masks (the mock's are 0..254)."""
    example['image'] %= 2


REALISTIC = dict(clevr_count=one_object_count_per_scene, clevr_dist=one_object_count_per_scene,
                 kitti=one_object_count_per_scene, dsprites_loc=binary_mask,
                 dsprites_ori=binary_mask)


@contextlib.contextmanager
def mock_tfds(tfds, task):
    """tfds.testing.mock_data for ``task``'s builder, MOCK_EXAMPLES per split, each example
    adjusted where the mock is unlike the real data (REALISTIC): deterministic as the mock
    itself (its generator's per-example rng)."""
    from tensorflow_datasets.testing import mocking
    original = mocking.RandomFakeGenerator._generate_example
    adjust = REALISTIC.get(task)

    def generate(self, rng):
        self._constant_dynamic_shape = adjust is one_object_count_per_scene  # 10, then cut
        example = original(self, rng)
        adjust(example, rng)
        return example

    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        if adjust is None:
            yield
            return
        mocking.RandomFakeGenerator._generate_example = generate
        try:
            yield
        finally:
            mocking.RandomFakeGenerator._generate_example = original


@pytest.fixture(scope='module')
def manual_dir(tmp_path_factory):
    """What the manual downloads of resisc45 and diabetic_retinopathy leave (empty files)."""
    folder = tmp_path_factory.mktemp('manual')
    for name in ('NWPU-RESISC45', 'train', 'test', 'sample'):
        (folder / name).mkdir()
        (folder / name / 'placeholder.jpg').touch()
    (folder / 'trainLabels.csv').touch()
    return str(folder)


# -- the split table, with VPT's real numbers ----------------------------------------------------
def test_split_table_gives_vtab1k_sizes():
    assert set(VTAB_SOURCES) == set(VTAB_TASKS)
    for task, test_size in VTAB_TEST_SIZES.items():
        assert vtab_split_sizes(task) == dict(train800=800, val200=200, train800val200=1000,
                                              test=test_size), task


def test_split_table_slices_as_vpt():
    def origin(task, split):
        source = VTAB_SOURCES[task]
        piece = source.splits[split]
        return piece.describe(source.tfds_sizes[piece.split])

    # val200 carved out of train after 90% / 80% / 60% of it; dmlab's and the like from the
    # official validation split
    assert origin('cifar', 'val200') == 'train[45000:45200]'
    assert origin('caltech101', 'val200') == 'train[2754:2954]'
    assert origin('svhn', 'val200') == 'train[65931:66131]'
    assert origin('oxford_iiit_pet', 'val200') == 'train[2944:3144]'
    assert origin('clevr_count', 'val200') == 'train[63000:63200]'
    assert origin('dmlab', 'val200') == 'validation[0:200]'
    assert origin('smallnorb_ele', 'val200') == 'test[0:200]'
    # test: the official test split, or what follows train and val in the only split
    assert origin('clevr_dist', 'test') == 'validation[0:15000]'
    assert origin('eurosat', 'test') == 'train[21600:27000]'
    assert origin('resisc45', 'val200') == 'train[18900:19100]'
    assert origin('dsprites_ori', 'val200') == 'train[589824:590024]'
    assert origin('dsprites_loc', 'test') == 'train[663552:737280]'
    assert origin('smallnorb_azi', 'test') == 'test[12150:24300]'
    assert origin('kitti', 'train800') == 'train[0:800]'


def test_slice_arithmetic_with_small_numbers():
    assert Slice('train', (90, ), 200).bounds(20) == (18, 20)  # cut short at the end
    assert Slice('train', (60, 20)).bounds(29) == (17 + 5, 29)  # each percentage floored
    assert Slice('train', count=800).bounds(5) == (0, 5)
    assert Slice('test', (50, )).bounds(7) == (3, 7)
    assert Slice('train', (80, 10), 3).bounds(20) == (18, 20)


def test_structured_labels_at_the_bin_edges():
    source = VTAB_SOURCES

    def clevr(depths, count=None):
        depths = list(depths)
        objects = dict(pixel_coords=np.array([[0., 0., d] for d in depths], np.float32),
                       size=np.zeros(count or len(depths), np.int64))
        return dict(objects=objects)

    assert [source['clevr_count'].label(clevr([9.] * n)) for n in (3, 6, 10)] == [0, 3, 7]
    dist = source['clevr_dist'].label
    depths = (7.99, 8.01, 8.49, 8.51, 8.99, 9.01, 9.49, 9.51, 9.99, 10.01, 99.)
    assert [dist(clevr([d, 12.])) for d in depths] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert dist(clevr([8.0])) == 0  # an edge belongs to the bin below it (VPT: thr < dist)

    def kitti(types, depths):
        return dict(objects=dict(type=np.array(types, np.int64),
                                 location=np.array([[1., 2., d] for d in depths], np.float32)))

    vehicle = source['kitti'].label
    assert vehicle(kitti([0, 3], [25., 3.])) == 2  # the pedestrian (type 3) at 3 m is no vehicle
    assert vehicle(kitti([2, 1], [30., 7.5])) == 0
    assert [vehicle(kitti([0], [d])) for d in (7.99, 8.0, 8.01, 19.99, 20.0, 20.01, 90.)] == \
        [0, 0, 1, 1, 1, 2, 2]
    assert vehicle(kitti([4, 7], [5., 6.])) == 3  # no vehicle at all
    assert vehicle(kitti([], [])) == 3
    loc, ori = source['dsprites_loc'].label, source['dsprites_ori'].label
    assert [loc(dict(label_x_position=x)) for x in (0, 1, 2, 31)] == [0, 0, 1, 15]
    assert [ori(dict(label_orientation=o)) for o in (0, 2, 3, 5, 39)] == [0, 0, 1, 2, 15]
    azimuth, elevation = source['smallnorb_azi'].label, source['smallnorb_ele'].label
    example = dict(label_azimuth=17, label_elevation=8, label_category=1)
    assert (azimuth(example), elevation(example)) == (17, 8)


# -- the 19 builders on tfds' mock data ---------------------------------------------------------
def expected_label(task, example):
    """Written apart from the converter: VPT's rules as stated in its data code."""
    if task == 'clevr_count':
        return example['objects']['size'].shape[0] - 3
    if task == 'clevr_dist':
        closest = example['objects']['pixel_coords'][:, 2].min()
        return max(i for i, edge in enumerate((0, 8, 8.5, 9, 9.5, 10, 100)) if edge < closest)
    if task == 'kitti':
        objects = example['objects']
        depths = [loc[2] for kind, loc in zip(objects['type'], objects['location']) if kind < 3]
        closest = min(depths) if depths else 1000
        return max(i for i, edge in enumerate((-100, 8, 20, 999)) if edge < closest)
    if task == 'dsprites_loc':
        return int(example['label_x_position']) // 2  # 32 positions in 16 bins
    if task == 'dsprites_ori':
        return int(np.floor(example['label_orientation'] / 2.5))  # 40 angles in 16 bins
    if task.startswith('smallnorb'):
        return int(example['label_azimuth' if task.endswith('azi') else 'label_elevation'])
    return int(example['label'])


def expected_pixels(task, example):
    if task.startswith('smallnorb'):
        return example['image'][..., 0]
    if task.startswith('dsprites'):
        assert set(np.unique(example['image'])) <= {0, 1}
        return example['image'][..., 0].astype(np.uint8) * 255
    return example['image']


# Per task with MOCK_EXAMPLES per tfds split: test is the whole official split, or what
# follows train and val in the only one.
MOCK_TEST_SIZES = dict(eurosat=20 - 12 - 4, resisc45=20 - 12 - 4, dsprites_loc=20 - 16 - 2,
                       dsprites_ori=20 - 16 - 2, smallnorb_azi=10, smallnorb_ele=10)
MOCK_VAL_ORIGINS = dict(cifar='train[18:20]', caltech101='train[18:20]', svhn='train[18:20]',
                        oxford_iiit_pet='train[16:18]', clevr_count='train[18:20]',
                        clevr_dist='train[18:20]', eurosat='train[12:14]',
                        resisc45='train[12:14]', dsprites_loc='train[16:18]',
                        dsprites_ori='train[16:18]', smallnorb_azi='test[0:2]',
                        smallnorb_ele='test[0:2]')


@pytest.fixture(scope='module')
def mock_vtab(tfds, tmp_path_factory, manual_dir):
    """All 19 tasks converted from tfds' mock data; {task: {list line: tfds example}}."""
    root = str(tmp_path_factory.mktemp('vtab-1k'))
    examples = {}
    for task, source in SMALL_SOURCES.items():
        with mock_tfds(tfds, task):
            status = convert_vtab(root, [task], str(tmp_path_factory.mktemp('tfds')),
                                  manual_dir=manual_dir, num_workers=2, sources=SMALL_SOURCES,
                                  log=lambda message: None)
            assert status == {task: 'converted'}
            builder = tfds.builder(f'{source.tfds_name}:{source.version}')
            readers = {}
            examples[task] = {}
            with open(osp.join(root, task, 'train800val200.txt')) as f:
                lines = f.readlines()
            with open(osp.join(root, task, 'test.txt')) as f:
                lines += f.readlines()
            for line in lines:
                tfds_split, index = re.fullmatch(r'images/\w+/(\w+)_(\d+)\.png \d+\n',
                                                 line).groups()
                if tfds_split not in readers:
                    readers[tfds_split] = builder.as_data_source(split=tfds_split)
                examples[task][line] = readers[tfds_split][int(index)]
    return root, examples


def test_every_builder_converts_from_mock_data(mock_vtab):
    root, examples = mock_vtab
    for task, lines in examples.items():
        test_size = MOCK_TEST_SIZES.get(task, MOCK_EXAMPLES)
        # serialize_data=False: mmengine's serialization runs gc.collect(), 0.2 s each here
        sizes = {split: len(VTAB1k(root, task, split=split, serialize_data=False))
                 for split in ('train800', 'val200', 'train800val200', 'test')}
        assert sizes == dict(train800=3, val200=2, train800val200=5, test=test_size), task
        manifest = read_manifest(osp.join(root, task))
        assert manifest['splits']['val200']['tfds'] == MOCK_VAL_ORIGINS.get(
            task, 'validation[0:2]'), task
        assert manifest['source']['version'] == VTAB_SOURCES[task].version
        for line, example in lines.items():
            path, label = line.split()
            assert int(label) == expected_label(task, example), (task, line)
            written = Image.open(osp.join(root, task, path))
            assert written.format == 'PNG'
            assert np.array_equal(np.asarray(written), expected_pixels(task, example)), line


def test_converted_folders_load_through_vtab1k(mock_vtab):
    root, examples = mock_vtab
    for task in ('cifar', 'kitti', 'smallnorb_azi', 'dsprites_ori'):
        dataset = VTAB1k(root, task, split='train800val200', pipeline=PIPELINE)
        with open(osp.join(root, task, 'train800val200.txt')) as f:
            labels = [int(line.split()[1]) for line in f]
        assert [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))] == labels
        item = dataset[0]  # grey PNGs load with three channels, as VPT tiles them
        assert item['inputs'].shape[0] == 3
        assert item['data_samples'].gt_label.item() == labels[0]
    # the derived labels are not one class: the object counts 3..10 give several
    count_labels = {int(line.split()[1]) for line in examples['clevr_count']}
    assert len(count_labels) >= 3 and max(count_labels) <= 7


def test_manifest_records_the_source_and_the_list_checksums(mock_vtab):
    root, _ = mock_vtab
    manifest = read_manifest(osp.join(root, 'kitti'))
    assert manifest['source'] == dict(
        tfds_name='kitti', version='3.3.0', vpt_version='3.2.0',
        version_note=VTAB_SOURCES['kitti'].version_note,
        tensorflow_datasets=manifest['source']['tensorflow_datasets'],
        split_sizes=dict(train=20, validation=20, test=20),
        vpt_split_sizes=dict(train=6347, validation=423, test=711), matches_vpt_sizes=False)
    assert manifest['num_classes'] == 4 and manifest['image_format'] == 'png'
    assert manifest['lossless'] is True
    assert manifest['splits']['train800val200']['tfds'] == 'train[0:3] + validation[0:2]'
    for name, digest in manifest['list_sha256'].items():
        with open(osp.join(root, 'kitti', name), 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


def test_jpeg_format_says_it_is_lossy(tfds, tmp_path, vtab_tool, capsys):
    sources = {'cifar': SMALL_SOURCES['cifar']}
    with mock_tfds(tfds, 'cifar'):
        messages = []
        convert_vtab(str(tmp_path), ['cifar'], str(tmp_path / 'tfds'), image_format='jpeg',
                     sources=sources, log=messages.append)
    assert any('lossy' in message for message in messages)
    manifest = read_manifest(str(tmp_path / 'cifar'))
    assert manifest['image_format'] == 'jpeg' and manifest['lossless'] is False
    with open(tmp_path / 'cifar' / 'test.txt') as f:
        first = f.readline().split()[0]
    assert first.endswith('.jpg')
    assert Image.open(tmp_path / 'cifar' / first).format == 'JPEG'
    assert len(VTAB1k(str(tmp_path), 'cifar', split='test')) == MOCK_EXAMPLES
    assert vtab_tool.main(['--verify', str(tmp_path), '--tasks', 'cifar']) == 1  # sizes
    report = capsys.readouterr().out
    assert 'JPEG-encoded' in report and '25 JPEG-encoded' in report


# -- a real builder, prepared and read without mocks -------------------------------------------
def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, 'PNG')
    buffer.seek(0)
    return buffer


def tiny_pixels(index):
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (6 + index % 5, 7, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def tiny_builders(tfds):
    """Real tfds builders (registered by name when defined): tiny_scenes, 30 train and 12
    test images (PNG-encoded, as the archives tfds reads); and four that fail the ways
    tfds' builders do: needs_tensorflow (reads with tf.io.gfile, as most of tfds' builders),
    needs_hdf5 (a module that is not installed, as dsprites' h5py), undecodable_image (an
    archive image the builder cannot decode, as sun397's), drops_connection (a download
    cut off, its partial file left)."""
    class TinyScenes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                dict(image=tfds.features.Image(shape=(None, None, 3)),
                     label=tfds.features.ClassLabel(num_classes=10))))

        def _split_generators(self, dl_manager):
            return dict(train=self._generate_examples(0, 30),
                        test=self._generate_examples(100, 12))

        def _generate_examples(self, first, count):
            for index in range(first, first + count):
                yield index, dict(image=png_bytes(tiny_pixels(index)), label=index % 10)

    class NeedsTensorflow(TinyScenes):
        def _split_generators(self, dl_manager):
            from tensorflow_datasets.core.utils.lazy_imports_utils import tensorflow as tf
            tf.io.gfile.exists(dl_manager.manual_dir)
            return super()._split_generators(dl_manager)

    class NeedsHdf5(TinyScenes):
        def _split_generators(self, dl_manager):
            importlib.import_module('h5py_of_a_test')
            return super()._split_generators(dl_manager)

    class UndecodableImage(TinyScenes):
        def _generate_examples(self, first, count):
            raise ValueError('Image SUN397/t/track/outdoor/sun_x.jpg could not be decoded.')
            yield  # a generator, as tfds expects

    class DropsConnection(TinyScenes):
        """Loses the connection half-way through a download, leaving tfds' partial file."""
        def _split_generators(self, dl_manager):
            partial = dl_manager.download_dir / self.name / f'scenes.tar.gz.tmp.{"0" * 32}'
            partial.mkdir(parents=True)
            (partial / 'scenes.tar.gz').write_bytes(b'half an archive')
            raise ConnectionError('Connection reset by peer')

    return TinyScenes


def test_real_builder_prepared_and_read_exactly(tfds, tiny_builders, tmp_path):
    source = dataclasses.replace(
        VTAB_SOURCES['eurosat'], tfds_name='tiny_scenes', version='1.0.0',
        splits=dict(train800=Slice('train', count=8), val200=Slice('train', (50, ), 4),
                    test=Slice('test')), tfds_sizes=dict(train=30, test=12))
    tfds_dir = str(tmp_path / 'tfds')
    convert_vtab(str(tmp_path / 'out'), ['eurosat'], tfds_dir, sources=dict(eurosat=source),
                 log=lambda message: None)
    task_dir = tmp_path / 'out' / 'eurosat'
    reader = tfds.builder('tiny_scenes:1.0.0', data_dir=tfds_dir)
    readers = {split: reader.as_data_source(split=split) for split in ('train', 'test')}
    sizes = {}
    for split in ('train800', 'val200', 'test'):
        with open(task_dir / f'{split}.txt') as f:
            lines = [line.split() for line in f]
        sizes[split] = len(lines)
        for path, label in lines:
            tfds_split, index = re.fullmatch(r'images/\w+/(\w+)_(\d+)\.png', path).groups()
            example = readers[tfds_split][int(index)]
            pixels = np.asarray(Image.open(task_dir / path))
            assert np.array_equal(pixels, example['image']) and int(label) == example['label']
            # tfds stores the examples shuffled; the pixels are those the builder gave
            assert any(np.array_equal(pixels, tiny_pixels(i)) for i in range(30)) or \
                any(np.array_equal(pixels, tiny_pixels(i)) for i in range(100, 112))
    assert sizes == dict(train800=8, val200=4, test=12)
    with open(task_dir / 'val200.txt') as f:
        assert f.readline().startswith('images/val200/train_0000015.png')  # 50% of 30
    assert read_manifest(str(task_dir))['source']['matches_vpt_sizes'] is True


def test_missing_tensorflow_is_one_line(tfds, tiny_builders, tmp_path, vtab_tool, capsys,
                                        monkeypatch):
    if importlib.util.find_spec('tensorflow') is not None:
        pytest.skip('TensorFlow is installed here: the message cannot show')
    source = dataclasses.replace(SMALL_SOURCES['dtd'], tfds_name='needs_tensorflow',
                                 version='1.0.0')
    monkeypatch.setitem(vtab_preparation.VTAB_SOURCES, 'dtd', source)
    assert vtab_tool.main([str(tmp_path / 'out'), '--tasks', 'dtd', '--tfds-dir',
                           str(tmp_path / 'tfds')]) == 1
    assert capsys.readouterr().err.splitlines() == [
        'vtab1k.py: error: dtd: generating needs_tensorflow:1.0.0 from its download needs '
        'TensorFlow (tfds\' builders read their archives with it): pip install -r '
        f'{vtab_preparation.TENSORFLOW_EXTRA}']
    assert not osp.exists(tmp_path / 'out' / 'dtd')


@pytest.mark.parametrize('name, val200, message', [
    ('needs_hdf5', 'train', r'dtd: generating needs_hdf5:1\.0\.0 needs the module h5py_of_a_test: '
     r'pip install it'),
    ('undecodable_image', 'train', r'dtd: tensorflow-datasets could not prepare '
     r'undecodable_image:1\.0\.0 in .*/tfds \(ValueError: Image '
     r'SUN397/t/track/outdoor/sun_x\.jpg could not be decoded\.'),
    ('tiny_scenes', 'validation', r"dtd: cannot read split 'validation' of tiny_scenes:1\.0\.0"),
])
def test_real_builder_failures_are_named(tfds, tiny_builders, tmp_path, name, val200, message):
    source = dataclasses.replace(
        SMALL_SOURCES['dtd'], tfds_name=name, version='1.0.0',
        splits=dict(SMALL_SOURCES['dtd'].splits, val200=Slice(val200, count=2)))
    with pytest.raises(PreparationError, match=message):
        convert_vtab(str(tmp_path / 'out'), ['dtd'], str(tmp_path / 'tfds'),
                     sources=dict(dtd=source), log=lambda message: None)
    assert os.listdir(tmp_path / 'out') == []


# -- errors, one line each ----------------------------------------------------------------------
def test_missing_tfds_is_one_line(vtab_tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # import fails as uninstalled
    assert vtab_tool.main([str(tmp_path), '--tasks', 'dtd']) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('vtab1k.py: error: tensorflow-datasets is needed')
    assert err[0].endswith(f'pip install -r {vtab_preparation.DATA_EXTRA}')
    assert vtab_preparation.DATA_EXTRA == osp.join(ROOT, 'requirements/extras/data.txt')


@pytest.mark.parametrize('task, needed', [
    ('resisc45', ['NWPU-RESISC45', 'unrar x NWPU-RESISC45.rar', '1drv.ms']),
    ('diabetic_retinopathy', ['trainLabels.csv', 'cat train.zip.* > train.zip', 'sample/'])])
def test_manual_download_gives_the_instruction(tfds, task, needed, tmp_path, vtab_tool, capsys,
                                               monkeypatch):
    monkeypatch.setitem(vtab_preparation.VTAB_SOURCES, task, SMALL_SOURCES[task])
    manual = tmp_path / 'manual'
    with mock_tfds(tfds, task):
        assert vtab_tool.main([str(tmp_path / 'out'), '--tasks', task, '--tfds-dir',
                               str(tmp_path / 'tfds'), '--manual-dir', str(manual)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'vtab1k.py: error: {task}: {manual}')
    for text in needed:
        assert text in err[0]
    assert not osp.exists(tmp_path / 'out' / task)


# -- before any download: what a task needs, the offline routes, no partial files left --------
DTD_ARCHIVE = 'dtd-r1.0.1.tar.gz'
DTD_URL = f'https://www.robots.ox.ac.uk/~vgg/data/dtd/download/{DTD_ARCHIVE}'
NEEDS_TENSORFLOW = ("generating dtd:3.0.1 from its downloads needs TensorFlow, not installed "
                    "here (tfds' builders read their archives with it): pip install -r "
                    f"{vtab_preparation.TENSORFLOW_EXTRA}")
OFFLINE_ROUTES = ('or use a copy prepared elsewhere (dtd:3.0.1 is not prepared in {tfds}): '
                  '--tfds-dir DIR where it is, or an existing VTAB-1k folder (check it with '
                  '`vtab1k.py --verify ROOT`)')


@pytest.fixture
def no_proxy(monkeypatch):
    """No proxy from the environment: the probes go to the download hosts themselves."""
    for name in ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy'):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def probes(monkeypatch, no_proxy):
    """Every host is as unreachable as a local port nothing listens on; the addresses probed
    are recorded. A download that starts anyway fails at once (requests' send)."""
    import requests
    refused, connect, probed = closed_port(), downloads.connect, []

    def unreachable_connect(host, port, timeout):
        probed.append((host, port))
        connect('127.0.0.1', refused, timeout)

    def no_download(*args, **kwargs):
        raise AssertionError('a download started')

    monkeypatch.setattr(downloads, 'connect', unreachable_connect)
    monkeypatch.setattr(requests.Session, 'send', no_download)
    return probed


def closed_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]  # released: nothing listens there


def snapshot(folder):
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {osp.relpath(path, folder): None if osp.isdir(path) else open(path, 'rb').read()
            for path in glob.glob(osp.join(folder, '**'), recursive=True)}


def test_offline_fails_fast_naming_what_is_missing_and_the_routes(tfds, tmp_path, vtab_tool,
                                                                  capsys, monkeypatch, probes):
    monkeypatch.setattr(vtab_preparation, 'tensorflow_installed', lambda: False)
    root, tfds_dir = tmp_path / 'vtab-1k', tmp_path / 'tfds'
    # Already there: a task written earlier, and another run's partial download.
    make_vtab_task(str(root), 'cifar', num_classes=100, num_train=2, num_val=2, num_test=2)
    (root / 'cifar' / 'manifest.json').write_text('{"task": "cifar"}')
    other_run = tfds_dir / 'downloads' / 'dtd' / f'{DTD_ARCHIVE}.tmp.{"1" * 32}'
    other_run.mkdir(parents=True)
    (other_run / DTD_ARCHIVE).write_bytes(b'another run is downloading')
    before = snapshot(tmp_path)
    start = time.monotonic()
    assert vtab_tool.main([str(root), '--tasks', 'cifar', 'dtd', 'smallnorb_azi', '--tfds-dir',
                           str(tfds_dir)]) == 1
    assert time.monotonic() - start < 10  # tfds' retries took 209 s to give up
    err = capsys.readouterr().err.splitlines()
    expected = (f'vtab1k.py: error: dtd: {NEEDS_TENSORFLOW}; cannot reach www.robots.ox.ac.uk '
                f'(REASON) to download {DTD_ARCHIVE} (596.28 MiB, {DTD_URL}): put it into '
                f'{tfds_dir}/downloads/manual, where tfds takes downloads from (checking their '
                f'sha256); ' + OFFLINE_ROUTES.format(tfds=tfds_dir) + ' (1 more of the tasks '
                'asked for cannot be prepared here either: smallnorb_azi)')
    assert len(err) == 1 and re.fullmatch(re.escape(expected).replace(
        'REASON', r'ConnectionRefusedError: [^)]+'), err[0]), err
    # each host once, no retries, before any task is written
    assert sorted(probes) == [('cs.nyu.edu', 443), ('www.robots.ox.ac.uk', 443)]
    assert snapshot(tmp_path) == before  # nothing written, nothing removed


def test_archives_already_here_need_no_network(tfds, tmp_path, vtab_tool, capsys, monkeypatch,
                                               probes):
    from etils import epath
    from tensorflow_datasets.core.download import resource as tfds_resource
    tfds_dir, manual = tmp_path / 'tfds', tmp_path / 'tfds' / 'downloads' / 'manual'
    manual.mkdir(parents=True)
    (manual / DTD_ARCHIVE).write_bytes(b'')  # tfds checks the sha256 when it reads it
    monkeypatch.setattr(vtab_preparation, 'tensorflow_installed', lambda: False)
    assert vtab_tool.main([str(tmp_path / 'out'), '--tasks', 'dtd', '--tfds-dir',
                           str(tfds_dir)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f'vtab1k.py: error: dtd: {NEEDS_TENSORFLOW}; ' + OFFLINE_ROUTES.format(tfds=tfds_dir)]

    def check():
        vtab_preparation.check_before_downloading(
            str(tmp_path / 'out'), ['dtd'], VTAB_SOURCES, tfds, str(tfds_dir), str(manual))
    monkeypatch.setattr(vtab_preparation, 'tensorflow_installed', lambda: True)
    check()  # the archive in the manual folder: nothing to download
    (manual / DTD_ARCHIVE).unlink()
    with pytest.raises(PreparationError, match=f'cannot reach www.robots.ox.ac.uk .* to '
                       f'download {re.escape(DTD_ARCHIVE)}'):
        check()
    # tfds' own cache of an earlier download: the file and its .INFO, under tfds' name for it
    info = tfds.builder('dtd:3.0.1', data_dir=str(tfds_dir)).url_infos[DTD_URL]
    cached = epath.Path(tfds_dir / 'downloads' / 'dtd' / tfds_resource.get_dl_fname(
        DTD_URL, info.checksum))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'')
    tfds_resource.get_info_path(cached).write_text('{}')
    probes.clear()
    check()
    assert probes == []


def test_failed_download_leaves_no_partial_files(tfds, tiny_builders, tmp_path):
    tfds_dir = tmp_path / 'tfds'
    other_run = tfds_dir / 'downloads' / 'drops_connection' / f'other.zip.tmp.{"1" * 32}'
    other_run.mkdir(parents=True)
    source = dataclasses.replace(SMALL_SOURCES['dtd'], tfds_name='drops_connection',
                                 version='1.0.0')
    with pytest.raises(PreparationError, match=r'dtd: tensorflow-datasets could not prepare '
                       r'drops_connection:1\.0\.0 in .*\(ConnectionError: Connection reset'):
        convert_vtab(str(tmp_path / 'out'), ['dtd'], str(tfds_dir), sources=dict(dtd=source),
                     log=lambda message: None)
    assert glob.glob(str(tfds_dir / '**' / '*.tmp.*'), recursive=True) == [str(other_run)]
    assert os.listdir(tmp_path / 'out') == []


def test_probe_is_bounded_and_names_each_address(monkeypatch, no_proxy):
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        port, refused = server.getsockname()[1], closed_port()
        found = downloads.unreachable([f'http://127.0.0.1:{port}/a', f'http://127.0.0.1:{port}/b',
                                       f'https://127.0.0.1:{refused}/c'], timeout=2)
    assert list(found) == [('127.0.0.1', refused)]
    assert found[('127.0.0.1', refused)].startswith('ConnectionRefusedError')
    # A host that does not answer is reported at the timeout, not waited for.
    monkeypatch.setattr(downloads, 'connect', lambda host, port, timeout: time.sleep(3))
    start = time.monotonic()
    assert downloads.unreachable(['https://slow.example/x'], timeout=0.3) == {
        ('slow.example', 443): 'no answer within 0.3 s'}
    assert time.monotonic() - start < 2
    # Through a proxy, the proxy is what a download connects to.
    monkeypatch.setenv('https_proxy', 'http://proxy.example:3128')
    monkeypatch.setenv('no_proxy', 'local.example')
    assert downloads.address_of(DTD_URL) == ('proxy.example', 3128)
    assert downloads.address_of('https://local.example/x') == ('local.example', 443)


def test_sources_agree_with_tfds_downloads(tfds, tmp_path):
    """The tasks' manual downloads are those tfds marks as manual; the URLs said unused are
    in tfds' checksums (else tfds moved on and the table is stale); every task has something
    to fetch; tfds' builders are known to need TensorFlow to generate."""
    manual = []
    for task, source in VTAB_SOURCES.items():
        builder = vtab_preparation.tfds_builder(task, source, tfds, str(tmp_path))
        urls = set(builder.url_infos or {})
        assert set(source.unused_downloads) <= urls, task
        assert bool(source.manual_paths) == bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS), task
        assert urls - set(source.unused_downloads) or source.manual_paths, task
        assert vtab_preparation.needs_tensorflow(builder), task
        if source.manual_paths:
            manual.append(task)
    assert manual == ['resisc45', 'diabetic_retinopathy']


def test_labels_out_of_range_name_the_example(tfds, tmp_path):
    # Without one object count per scene, tfds' mock gives CLEVR scenes of 5..49 objects.
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        with pytest.raises(PreparationError, match=r'clevr_count: train\[\d+\] gives label '
                           r'\d+, outside 0\.\.7 \(Number of objects'):
            convert_vtab(str(tmp_path), ['clevr_count'], str(tmp_path / 'tfds'),
                         sources=SMALL_SOURCES, log=lambda message: None)
    assert not [name for name in os.listdir(tmp_path) if name.startswith('clevr')]  # no partial


def test_command_line_misuse(vtab_tool, fgvc_tool, tmp_path, capsys):
    for tool, argv, message in (
            (vtab_tool, [str(tmp_path), '--tasks', 'imagenet'], "unknown VTAB-1k task 'imagenet'"),
            (vtab_tool, [], 'give the output folder ROOT, or --verify ROOT'),
            (fgvc_tool, [str(tmp_path), '--verify', str(tmp_path)], 'give the datasets\' folder')):
        with pytest.raises(SystemExit):
            tool.main(argv)
        assert message in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(PreparationError, match="image format 'webp': choose png or jpeg"):
        convert_vtab(str(tmp_path), ['dtd'], str(tmp_path), image_format='webp')


def test_unknown_version_and_foreign_folder(tfds, tmp_path):
    sources = {'cifar': dataclasses.replace(SMALL_SOURCES['cifar'], version='9.9.9')}
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        with pytest.raises(PreparationError, match=r'cifar: tensorflow-datasets cannot provide '
                           r'cifar100:9\.9\.9 \(.*9\.9\.9'):
            convert_vtab(str(tmp_path), ['cifar'], str(tmp_path / 'tfds'), sources=sources)
        make_vtab_task(str(tmp_path), 'dtd', num_classes=47, num_train=2, num_val=2, num_test=2)
        with pytest.raises(PreparationError, match='dtd exists without a manifest.json'):
            convert_vtab(str(tmp_path), ['dtd'], str(tmp_path / 'tfds'), sources=SMALL_SOURCES)


KILLED_RUN = '''
import os, signal, sys
import tensorflow_datasets as tfds
from mmvpt.datasets.preparation import vtab
from tests.test_datasets.test_converters import SMALL_SOURCES
written = []
save = vtab.save_image
def save_then_die(array, path, image_format):
    save(array, path, image_format)
    written.append(path)
    if 'dtd.partial' in path and sum('dtd.partial' in p for p in written) == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # as a cluster's time limit or the OOM killer
vtab.save_image = save_then_die
with tfds.testing.mock_data(num_examples=20):
    vtab.convert_vtab(sys.argv[1], ['cifar', 'dtd'], sys.argv[2], num_workers=1,
                      sources=SMALL_SOURCES)
'''


@pytest.mark.tools
def test_killed_run_leaves_nothing_that_looks_complete_and_resumes(tfds, tmp_path):
    root, tfds_dir = str(tmp_path / 'vtab-1k'), str(tmp_path / 'tfds')
    proc = subprocess.run([sys.executable, '-c', KILLED_RUN, root, tfds_dir], cwd=ROOT,
                          env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert sorted(os.listdir(root)) == ['cifar', 'dtd.partial']
    assert len(os.listdir(osp.join(root, 'dtd.partial', 'images', 'train800'))) >= 3
    with pytest.raises(FileNotFoundError, match='VTAB-1k task folder not found'):
        VTAB1k(root, 'dtd', split='train800')
    cifar_manifest = osp.join(root, 'cifar', 'manifest.json')
    written = os.stat(cifar_manifest).st_mtime_ns
    messages = []
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        status = convert_vtab(root, ['cifar', 'dtd'], tfds_dir, sources=SMALL_SOURCES,
                              log=messages.append)
    assert status == dict(cifar='skipped', dtd='converted')
    assert 'cifar: complete (png), skipped' in messages
    assert sorted(os.listdir(root)) == ['cifar', 'dtd']
    assert os.stat(cifar_manifest).st_mtime_ns == written
    assert len(VTAB1k(root, 'dtd', split='train800val200')) == 5


# -- --verify on folders of VPT's real sizes ------------------------------------------------------
@pytest.fixture(scope='module')
def real_size_vtab(tmp_path_factory):
    """kitti (PNG) and dtd (JPEG, as shared copies have it) with VPT's split sizes."""
    root = str(tmp_path_factory.mktemp('vtab-real'))
    make_vtab_task(root, 'kitti', num_classes=4, num_train=800, num_val=200, num_test=711,
                   size=8, ext='png')
    make_vtab_task(root, 'dtd', num_classes=47, num_train=800, num_val=200, num_test=1880,
                   size=8, ext='jpg')
    return root


def test_verify_accepts_vpt_sizes_and_reports_jpeg(real_size_vtab, vtab_tool, capsys):
    assert vtab_tool.main(['--verify', real_size_vtab, '--tasks', 'kitti', 'dtd']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ('kitti: ok: 800 / 200 / 1000 / 711 images (train800 / val200 / '
                        'train800val200 / test); 4 classes; images: 1711 PNG; no manifest.json '
                        '(not written by the converters)')
    assert lines[1].startswith('dtd: ok: 800 / 200 / 1000 / 1880 images')
    assert '2880 JPEG-encoded (JPEG is lossy: not the pixels tfds decodes' in lines[1]
    assert lines[2].endswith(': all of 2 tasks as VPT\'s splits')


def test_verify_names_what_is_wrong(real_size_vtab, tmp_path, mock_vtab):
    root = str(tmp_path / 'copy')
    shutil.copytree(osp.join(real_size_vtab, 'kitti'), osp.join(root, 'kitti'))
    task = osp.join(root, 'kitti')
    with open(osp.join(task, 'test.txt')) as f:
        lines = f.readlines()
    with open(osp.join(task, 'test.txt'), 'w') as f:
        f.writelines(line for line in lines if line.split()[1] != '3')  # class 3 gone
    os.remove(osp.join(task, 'images', 'val200', '000007.png'))
    with open(osp.join(task, 'train800.txt'), 'a') as f:
        f.write('images/train800/000000.png 4\n')  # outside 0..3
    ok, report = verify_vtab(root, ['kitti', 'svhn'])
    assert not ok
    assert report[0].startswith('kitti: FAIL: ')
    train800 = osp.join(task, 'train800.txt')
    assert f'{train800}:801: label 4 outside the class range 0..3' in report[0]
    assert 'test.txt has 534 images, VPT\'s test has 711' in report[0]
    assert 'test.txt has 3 of the 4 classes' in report[0]
    assert f'1 listed images are missing, e.g. {osp.join(task, "images/val200/000007.png")}' \
        in report[0]
    assert report[1] == f'svhn: FAIL: no folder (looked for {osp.join(root, "svhn")})'
    # a converted folder whose list changed after its manifest was written
    converted = str(tmp_path / 'converted')
    shutil.copytree(osp.join(mock_vtab[0], 'cifar'), osp.join(converted, 'cifar'))
    with open(osp.join(converted, 'cifar', 'val200.txt'), 'a') as f:
        f.write('images/test/test_0000000.png 1\n')
    ok, report = verify_vtab(converted, ['cifar'])
    assert 'val200.txt differs from its sha256 in manifest.json' in report[0]


# -- FGVC -----------------------------------------------------------------------------------------
FOUR_CLASSES = [(3, 10, 3), (7, 10, 3), (11, 10, 3), (20, 10, 3)]
ARCHIVES = dict(
    cub=FOUR_CLASSES,
    nabirds=[(295, 15, 3), (400, 15, 3), (817, 15, 3), (1003, 15, 3)],  # ids as sparse as NABirds'
    flowers=[(1, 5, 5, 3), (2, 5, 5, 3), (9, 5, 5, 3)],
    dogs=FOUR_CLASSES,
    cars=[(1, 20, 2), (5, 15, 2), (9, 10, 2), (12, 5, 2)])  # unbalanced, as Cars' classes are
# val = VPT's fraction of the official train split: round(N x val / (train + val)).
EXPECTED_SIZES = dict(cub=(36, 4, 12),  # 40 x 600 / 5994 = 4.0
                      nabirds=(54, 6, 12),  # 60 x 2393 / 23929 = 6.0
                      flowers=(15, 15, 9),  # the official splits
                      dogs=(36, 4, 12),  # 40 x 1200 / 12000
                      cars=(45, 5, 8))  # 50 x 815 / 8144 = 5.0


@pytest.fixture
def archives(tmp_path):
    root = str(tmp_path / 'fgvc')
    official = {task: write_fgvc_archive(root, task, classes)[1]
                for task, classes in ARCHIVES.items()}
    return root, official


def test_fgvc_all_five_from_their_archives(archives, fgvc_tool, capsys):
    root, official = archives
    assert fgvc_tool.main([root]) == 0
    out = capsys.readouterr().out
    assert 'warning: cub: splits of 36 / 4 / 12 images, VPT\'s had 5394 / 600 / 5794' in out
    for task, sizes in EXPECTED_SIZES.items():
        datasets = {split: FGVC(root, task, split=split, serialize_data=False)
                    for split in ('train', 'val', 'test')}
        assert tuple(len(datasets[split]) for split in ('train', 'val', 'test')) == sizes, task
        folder = datasets['train'].data_root
        splits = {}
        for split in ('train', 'val', 'test'):
            with open(osp.join(folder, f'{split}.json')) as f:
                splits[split] = json.load(f)
        # test is the official test split; train + val the official train (+ Flowers' val)
        assert {k: (v, 'test') for k, v in splits['test'].items()} == {
            k: v for k, v in official[task].items() if v[1] == 'test'}
        for split in ('train', 'val'):
            for key, class_id in splits[split].items():
                assert official[task][key] == (class_id, 'val' if task == 'flowers' and
                                               split == 'val' else 'train'), (task, key)
        labels = sorted({class_id for class_id, _ in official[task].values()})
        info = datasets['test'].get_data_info(0)
        key = osp.relpath(info['img_path'], osp.join(folder, datasets['test'].image_root))
        assert info['gt_label'] == labels.index(splits['test'][key])
        manifest = read_manifest(folder)
        assert manifest['split']['origin'] == ('official' if task == 'flowers' else 'stratified')
        for name, digest in manifest['list_sha256'].items():
            with open(osp.join(folder, name), 'rb') as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest
    # Cars' classes of 20 / 15 / 10 / 5 train images give 2 / 1.5 / 1 / 0.5 of 5 val images:
    # 2 / 2 / 1 / 0 (the tie of remainders goes to the smaller class id)
    with open(osp.join(root, 'Stanford-cars', 'val.json')) as f:
        val = list(json.load(f).values())
    assert [val.count(class_id) for class_id in (1, 5, 9, 12)] == [2, 2, 1, 0]
    assert fgvc_tool.main([root]) == 0  # complete: skipped
    assert capsys.readouterr().out.count('split), skipped') == 5


def test_stratified_split_is_deterministic_and_seeded():
    train = {f'img_{i:03d}.jpg': i % 3 for i in range(30)}
    first = stratified_val(train, 6, seed=0)
    assert first == stratified_val(dict(reversed(list(train.items()))), 6, seed=0)
    assert [sum(train[key] == c for key in first) for c in range(3)] == [2, 2, 2]
    assert stratified_val(train, 6, seed=1) != first
    assert len(stratified_val(train, 7, seed=0)) == 7


def vpt_style_files(root, official, task, folder_name):
    """Split files in VPT's form for ``task``: 0-based class ids (not the archive's), val out
    of the official train split."""
    ids = sorted({class_id for class_id, _ in official.values()})
    train = sorted(k for k, (_, split) in official.items() if split == 'train')
    files = dict(train={k: ids.index(official[k][0]) for k in train[2:]},
                 val={k: ids.index(official[k][0]) for k in train[:2]},
                 test={k: ids.index(c) for k, (c, split) in official.items() if split == 'test'})
    os.makedirs(osp.join(root, folder_name), exist_ok=True)
    for split, content in files.items():
        with open(osp.join(root, folder_name, f'{split}.json'), 'w') as f:
            json.dump(content, f, indent=2)
    return files


def test_fgvc_vpt_files_are_checked_and_passed_through(archives, tmp_path, fgvc_tool, capsys):
    root, official = archives
    vpt_root = str(tmp_path / 'vpt_splits')
    vpt_style_files(vpt_root, official['cub'], 'cub', 'CUB_200_2011')
    assert fgvc_tool.main([root, '--tasks', 'cub', '--vpt-splits', vpt_root]) == 0
    for split in ('train', 'val', 'test'):
        with open(osp.join(vpt_root, 'CUB_200_2011', f'{split}.json'), 'rb') as given, \
                open(osp.join(root, 'CUB_200_2011', f'{split}.json'), 'rb') as written:
            assert given.read() == written.read()
    assert read_manifest(osp.join(root, 'CUB_200_2011'))['split']['origin'] == 'vpt'
    assert len(FGVC(root, 'cub', split='val')) == 2
    # VPT's files already in the dataset folder: checked, left as they are
    files = vpt_style_files(root, official['dogs'], 'dogs', 'Stanford-dogs')
    before = os.stat(osp.join(root, 'Stanford-dogs', 'train.json')).st_mtime_ns
    assert fgvc_tool.main([root, '--tasks', 'dogs', '--vpt-splits', root]) == 0
    assert os.stat(osp.join(root, 'Stanford-dogs', 'train.json')).st_mtime_ns == before
    assert len(FGVC(root, 'dogs', split='train')) == len(files['train'])
    capsys.readouterr()


def test_fgvc_vpt_files_that_disagree_are_refused(archives, tmp_path):
    root, official = archives
    vpt_root = str(tmp_path / 'vpt_splits')
    files = vpt_style_files(vpt_root, official['nabirds'], 'nabirds', 'nabirds')
    test_key = next(iter(files['test']))
    wrong = dict(files['val'], **{test_key: files['test'][test_key]})  # a test image in val
    with open(osp.join(vpt_root, 'nabirds', 'val.json'), 'w') as f:
        json.dump(wrong, f)
    with pytest.raises(PreparationError, match=rf'nabirds: VPT\'s train.json \+ val.json in '
                       rf'{vpt_root}/nabirds do not cover the archive\'s official train split '
                       rf'\(1 extra, 0 missing; {test_key} is not an image of it\)'):
        convert_fgvc(root, ['nabirds'], vpt_splits=vpt_root, log=lambda message: None)
    files = vpt_style_files(vpt_root, official['nabirds'], 'nabirds', 'nabirds')
    key = next(iter(files['train']))
    files['train'][key] = (files['train'][key] + 1) % 4  # one image with another class
    with open(osp.join(vpt_root, 'nabirds', 'train.json'), 'w') as f:
        json.dump(files['train'], f)
    with pytest.raises(PreparationError, match='nabirds: VPT\'s class .* maps to several '
                       'classes'):
        convert_fgvc(root, ['nabirds'], vpt_splits=vpt_root, log=lambda message: None)
    files = vpt_style_files(vpt_root, official['nabirds'], 'nabirds', 'nabirds')
    key = next(iter(files['train']))
    files['train'][key] = 99  # a second VPT id for one official class
    with open(osp.join(vpt_root, 'nabirds', 'train.json'), 'w') as f:
        json.dump(files['train'], f)
    with pytest.raises(PreparationError, match=r'nabirds: the official class \d+ maps to several '
                       r'classes \(\[\d+, 99\]\)'):
        convert_fgvc(root, ['nabirds'], vpt_splits=vpt_root, log=lambda message: None)
    files = vpt_style_files(vpt_root, official['nabirds'], 'nabirds', 'nabirds')
    with open(osp.join(vpt_root, 'nabirds', 'val.json'), 'w') as f:
        json.dump(dict(files['val'], **{key: files['train'][key]}), f)  # in train too
    with pytest.raises(PreparationError, match=r'nabirds/val.json: 1 images are in train.json '
                       rf'too, e.g. {key}'):
        convert_fgvc(root, ['nabirds'], vpt_splits=vpt_root, log=lambda message: None)
    os.remove(osp.join(vpt_root, 'nabirds', 'test.json'))
    with pytest.raises(PreparationError, match='test.json is missing'):
        convert_fgvc(root, ['nabirds'], vpt_splits=vpt_root, log=lambda message: None)
    assert read_manifest(osp.join(root, 'nabirds')) is None


def break_file(path, content=b'not what it should be\n'):
    with open(path, 'wb') as f:
        f.write(content)


def edit_lines(path, edit):
    with open(path) as f:
        lines = f.readlines()
    with open(path, 'w') as f:
        f.writelines(edit(lines))


def savemat(path, **variables):
    from scipy.io import savemat as write
    write(path, variables)


def duplicate_first_image(folder):
    """A second id for the first image in all three tables of NABirds."""
    for name in ('images.txt', 'image_class_labels.txt', 'train_test_split.txt'):
        edit_lines(osp.join(folder, name),
                   lambda lines: lines + ['another-id ' + lines[0].split(maxsplit=1)[1]])


DAMAGES = [
    ('cub', lambda f: os.remove(osp.join(f, 'images.txt')),
     r'{f}/images.txt is missing \(a file of the CUB-200-2011 archive\)'),
    ('cub', lambda f: break_file(osp.join(f, 'train_test_split.txt'), b'1 1\n2\n'),
     r'{f}/train_test_split.txt:2: expected "<id> <value>", got \'2\''),
    ('cub', lambda f: edit_lines(osp.join(f, 'image_class_labels.txt'), lambda ls: ls[:4]),
     r'{f}/image_class_labels.txt: no line for image 5 of images.txt'),
    ('cub', lambda f: edit_lines(osp.join(f, 'image_class_labels.txt'),
                                 lambda ls: ['1 x\n'] + ls[1:]),
     r"{f}/image_class_labels.txt: class 'x' of image 1 is not a number"),
    ('nabirds', lambda f: os.remove(osp.join(f, 'image_class_labels.txt')),
     r'{f}/image_class_labels.txt is missing'),
    ('nabirds', duplicate_first_image, r'nabirds: the archive lists \d{{4}}/\w+\.jpg twice'),
    ('flowers', lambda f: break_file(osp.join(f, 'setid.mat')),
     r'{f}/setid.mat: not a readable MATLAB file'),
    ('flowers', lambda f: savemat(osp.join(f, 'imagelabels.mat'), classes=np.ones((1, 3))),
     r'{f}/imagelabels.mat has no variable labels \(is it the Oxford Flowers-102 file\?\)'),
    ('flowers', lambda f: savemat(osp.join(f, 'setid.mat'), trnid=np.array([[1, 999]]),
                                  valid=np.array([[2]]), tstid=np.array([[3]])),
     r'{f}/setid.mat: image 999 is outside the 39 labels of imagelabels.mat'),
    ('dogs', lambda f: os.remove(osp.join(f, 'test_list.mat')),
     r'{f}/test_list.mat is missing \(a file of the Stanford Dogs archive\)'),
    ('dogs', lambda f: break_file(sorted(glob.glob(osp.join(f, 'Images', '*', '*.jpg')))[0],
                                  b''),  # truncated to nothing
     r'1 images are not JPEG or PNG files \(corrupt or truncated\?\), e.g. {f}/Images/'),
    ('cars', lambda f: os.remove(osp.join(f, 'cars_test_annos_withlabels.mat')),
     r'{f}/cars_test_annos_withlabels.mat is missing'),
    ('cars', lambda f: shutil.copy(osp.join(f, 'devkit', 'cars_test_annos.mat'),
                                   osp.join(f, 'cars_test_annos_withlabels.mat')),
     r'{f}/cars_test_annos_withlabels.mat: annotations without fname and class \(fields: '
     r'bbox_x1, bbox_y1, bbox_x2, bbox_y2, fname\)'),
    ('cars', lambda f: os.remove(osp.join(f, 'cars_train', '00003.jpg')),
     r'1 of the 58 images the archive lists are missing, e.g. {f}/cars_train/00003.jpg'),
]


@pytest.mark.parametrize('task, damage, message', DAMAGES)
def test_fgvc_corrupt_or_missing_sources_are_named(archives, task, damage, message):
    root, _ = archives
    folder = osp.join(root, dict(cub='CUB_200_2011', nabirds='nabirds', flowers='OxfordFlower',
                                 dogs='Stanford-dogs', cars='Stanford-cars')[task])
    damage(folder)
    with pytest.raises(PreparationError, match=message.format(f=re.escape(folder))):
        convert_fgvc(root, [task], log=lambda message: None)
    assert read_manifest(folder) is None


def test_fgvc_errors_are_one_line(archives, fgvc_tool, capsys):
    root, _ = archives
    os.remove(osp.join(root, 'OxfordFlower', 'imagelabels.mat'))
    assert fgvc_tool.main([root, '--tasks', 'flowers']) == 1
    assert capsys.readouterr().err.splitlines() == [
        f'fgvc.py: error: {root}/OxfordFlower/imagelabels.mat is missing (a file of the Oxford '
        f'Flowers-102 archive)']
    # split files that the converter did not write are never overwritten
    with open(osp.join(root, 'CUB_200_2011', 'train.json'), 'w') as f:
        json.dump({}, f)
    assert fgvc_tool.main([root, '--tasks', 'cub']) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and 'holds train.json without a manifest.json' in err[0]


def test_fgvc_folders_and_class_counts_are_checked(tmp_path, fgvc_tool, capsys):
    root = str(tmp_path / 'fgvc')
    assert fgvc_tool.main([root]) == 1
    assert capsys.readouterr().err.startswith(f'fgvc.py: error: no dataset folder under {root} '
                                              f'(looked for cub, CUB_200_2011, nabirds')
    write_fgvc_archive(root, 'flowers', [(c, 1, 1, 1) for c in range(1, 104)])  # 103 classes
    with pytest.raises(PreparationError, match='flowers: the archive has 103 classes, flowers '
                       'has 102'):
        convert_fgvc(root, ['flowers'], log=lambda message: None)
    with pytest.raises(PreparationError, match=r'cub: no folder under .*; looked for cub, '
                       r'CUB_200_2011'):
        convert_fgvc(root, ['cub'], log=lambda message: None)
    with pytest.raises(PreparationError, match='--vpt-splits /nonexistent is not a folder'):
        convert_fgvc(root, ['flowers'], vpt_splits='/nonexistent')
    root = str(tmp_path / 'fgvc-small')
    write_fgvc_archive(root, 'flowers', [(1, 1, 1, 1), (2, 1, 1, 1)])
    vpt_root = tmp_path / 'vpt' / 'OxfordFlower'
    vpt_root.mkdir(parents=True)
    for split in ('train', 'val', 'test'):
        (vpt_root / f'{split}.json').write_text('{"jpg/image_00001.jpg": 1}')
    (vpt_root / 'val.json').write_text('{"jpg/image_00001.jpg": 1,')
    with pytest.raises(PreparationError, match=r'val.json: not readable JSON \(JSONDecodeError'):
        convert_fgvc(root, ['flowers'], vpt_splits=str(tmp_path / 'vpt'))
    (vpt_root / 'val.json').write_text('["jpg/image_00001.jpg"]')
    with pytest.raises(PreparationError, match=r'val.json: expected \{"image path": class id\}'):
        convert_fgvc(root, ['flowers'], vpt_splits=str(tmp_path / 'vpt'))


def test_verify_reads_manifests_critically(mock_vtab, tmp_path):
    converted = str(tmp_path / 'converted')
    shutil.copytree(osp.join(mock_vtab[0], 'svhn'), osp.join(converted, 'svhn'))
    shutil.copytree(osp.join(mock_vtab[0], 'dmlab'), osp.join(converted, 'dmlab'))
    os.remove(osp.join(converted, 'svhn', 'test.txt'))
    break_file(osp.join(converted, 'dmlab', 'manifest.json'))
    ok, report = verify_vtab(converted, ['svhn', 'dmlab'])
    assert not ok
    assert 'test.txt is missing (manifest.json lists it)' in report[0]
    assert f'{converted}/dmlab/manifest.json: not a readable manifest (JSONDecodeError' in report[1]
    with pytest.raises(PreparationError, match='dmlab/manifest.json: not a readable manifest'):
        convert_vtab(converted, ['dmlab'], str(tmp_path / 'tfds'), sources=SMALL_SOURCES)


def test_fgvc_verify_with_vpt_sizes(tmp_path, fgvc_tool, capsys):
    """A CUB folder of VPT's 5394 / 600 / 5794 images over 200 classes (one JPEG, hard-linked
    to every name)."""
    root = str(tmp_path / 'fgvc')
    folder = osp.join(root, 'CUB_200_2011')
    os.makedirs(osp.join(folder, 'images'))
    source = osp.join(folder, 'one.jpg')
    Image.fromarray(synthetic_image(0, 4, 8, np.random.default_rng(0))).save(source)
    splits = {}
    for split, count in FGVC_SOURCES['cub'].vpt_sizes.items():
        splits[split] = {f'{i % 200 + 1:03d}.c/{split}_{i:05d}.jpg': i % 200 + 1
                         for i in range(count)}
        with open(osp.join(folder, f'{split}.json'), 'w') as f:
            json.dump(splits[split], f)
    for key in (key for split in splits.values() for key in split):
        os.makedirs(osp.join(folder, 'images', osp.dirname(key)), exist_ok=True)
        os.link(source, osp.join(folder, 'images', key))
    assert fgvc_tool.main(['--verify', root]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        'cub: ok: 5394 / 600 / 5794 images (train / val / test); 200 classes; images: 11788 '
        'JPEG-encoded; no manifest.json (not written by the converters)')
    val = dict(splits['val'])
    val[next(iter(splits['test']))] = 1  # a test image in val too
    with open(osp.join(folder, 'val.json'), 'w') as f:
        json.dump(val, f)
    ok, report = verify_fgvc(root, ['cub', 'cars'])
    assert not ok
    assert 'val.json has 601 images, VPT\'s val has 600' in report[0]
    assert '1 images are in both val and test, e.g. 001.c/test_00000.jpg' in report[0]
    assert report[1].startswith('cars: FAIL: no folder (looked for ')


# -- the data extra in tools/env.sh ----------------------------------------------------------------
@pytest.mark.tools
def test_env_sh_installs_the_data_extra_once(tmp_path):
    """Into a built environment (here a stand-in whose python records its arguments): pip
    installs requirements/extras/data.txt (then tests.txt) with the core pins as constraints, a
    stamp keyed by the file's hash marks it, the next activation installs nothing, a failed install
    leaves no stamp and says so."""
    env = tmp_path / 'env'
    (env / 'bin').mkdir(parents=True)
    (env / '.complete').touch()
    calls = tmp_path / 'calls'
    (env / 'bin' / 'python').write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\necho pip output\nexit ${{FAKE_PIP_STATUS:-0}}\n')
    (env / 'bin' / 'python').chmod(0o755)
    with open(osp.join(ROOT, 'requirements', 'extras', 'data.txt'), 'rb') as f:
        stamp = env / f'.extra-data-{hashlib.sha1(f.read()).hexdigest()[:10]}'

    def activate(status=0):
        return subprocess.run(['bash', '-c', 'source tools/env.sh && echo "active: $MMVPT_ENV"'],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, MMVPT_ENV=str(env),
                                       FAKE_PIP_STATUS=str(status)))

    failed = activate(status=3)
    assert failed.returncode != 0 and not stamp.exists()
    assert 'installing requirements/extras/data.txt failed (exit 3)' in failed.stderr
    assert 'pip output' in failed.stderr  # the log's last lines
    proc = activate()
    assert proc.returncode == 0 and f'active: {env}' in proc.stdout and stamp.exists()
    recorded = calls.read_text().splitlines()
    req = osp.join(ROOT, 'requirements')
    # the failed data install, then data and the tests extra (peft), each with the core pins
    assert recorded[1:] == [f'-m pip install --no-input --progress-bar off '
                            f'-r {req}/extras/{name}.txt '
                            f'-c {req}/build.txt -c {req}/torch.txt -c {req}/mmcv.txt '
                            f'-c {req}/runtime.txt' for name in ('data', 'tests')]
    assert activate().returncode == 0
    assert len(calls.read_text().splitlines()) == 3  # installed already: pip not called
