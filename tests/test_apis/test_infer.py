"""tools/infer.py and mmvpt.apis.inference.infer_images on tuned-only checkpoints of a tiny
CVPT classifier and a tiny CVPT SETR: its top-k scores and label maps equal what the model
gives by other routes (mmengine's load_checkpoint + the config's test pipeline; mmseg's
init_model + inference_model), class names come from the dataset, folders and patterns
expand to the expected files, outputs are images of the input's size, and bad inputs stop
it with one line naming them."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from PIL import Image

from mmvpt.apis.inference import InputError, expand_inputs, infer_images, output_names
from mmvpt.testing import synthetic_image, write_random_vit
from mmvpt.utils.tuned_checkpoint import load_tuned_checkpoint, save_tuned_checkpoint

from tests.conftest import pretrained_line, run_tool
from tests.helpers.tiny_models import (
    SEG_ARCH,
    model_from_config,
    scores_of,
    write_cvpt_config,
    write_tiny_seg_config,
)

CLASSES = ['ring', 'square', 'stripe', 'dot']


def save_tuned_only(model, path, dataset_meta, seed=0, scale=0.1):
    """Moves the tuned parameters off their init (seeded; ``scale`` keeps the scores of the
    tiny classifier apart and unsaturated) and saves what TunedCheckpointHook
    saves: the tuned tensors only (with the state dict's metadata, which records the
    pretrained backbone), the prompt methods and ``dataset_meta``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    save_tuned_checkpoint(path, model, meta=None if dataset_meta is None else dict(
        dataset_meta=dataset_meta))
    tuned, _ = load_tuned_checkpoint(path)
    assert not any(k.startswith('backbone.vit.') for k in tuned)
    assert tuned._metadata  # the pretrained backbone it was tuned on is recorded
    return str(path)


def write_images(root, specs):
    """Writes ``{relative path: (height, width)}`` synthetic images; returns their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for rel, (h, w) in specs.items():
        path = osp.join(root, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        image = synthetic_image(len(paths) % 4, 4, max(h, w), rng)[:h, :w]
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# -- classification ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def classifier(demo_backbone, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('infer_cls')
    config = write_cvpt_config(tmp / 'cvpt.py', pretrained_line(demo_backbone))
    model = model_from_config(config)
    model.init_weights()
    with_meta = save_tuned_only(model, tmp / 'tuned.pth', dict(classes=CLASSES))
    without_meta = save_tuned_only(model, tmp / 'no_meta.pth', None, seed=1)
    images = tmp / 'images'
    write_images(str(images), {'a/x.jpg': (40, 32), 'b/x.jpg': (32, 48), 'b/sub/y.png': (20, 20),
                               'b/z.png': (33, 31), 'c.bmp': (32, 32)})
    (images / 'b' / 'notes.txt').write_text('not an image\n')
    return config, with_meta, without_meta, images


def expected_scores(config, checkpoint, paths):
    """The checkpoint's scores through mmengine's load_checkpoint and the config's pipeline."""
    model = model_from_config(config)
    load_checkpoint(model, checkpoint, map_location='cpu')
    return [s.numpy() for s in scores_of(model, config, paths)]


@pytest.mark.tools
def test_classification_tool_topk_equals_the_models_scores(classifier, tmp_path):
    config, checkpoint, _, images = classifier
    out = tmp_path / 'out'  # created by the tool
    # A folder (recursive, sorted, the .txt skipped), a pattern, a file given twice.
    proc = run_tool('infer.py', config, checkpoint, str(images / 'b'), str(images / '*.bmp'),
                    str(images / 'a' / 'x.jpg'), str(images / 'b' / 'z.png'), '--topk', '3',
                    '--out-dir', str(out), '--device', 'cpu')
    want_paths = [str(images / p)
                  for p in ('b/sub/y.png', 'b/x.jpg', 'b/z.png', 'c.bmp', 'a/x.jpg')]
    predictions = json.loads((out / 'predictions.json').read_text())
    assert [p['path'] for p in predictions] == want_paths
    want = expected_scores(config, checkpoint, want_paths)
    for p, scores in zip(predictions, want):
        top = np.argsort(-scores)[:3]
        assert [t['index'] for t in p['topk']] == top.tolist()
        assert [t['name'] for t in p['topk']] == [CLASSES[i] for i in top]
        np.testing.assert_allclose([t['score'] for t in p['topk']], scores[top], rtol=0, atol=1e-5)
    # the images' scores differ, and are not saturated: every top-k entry is tested
    assert np.ptp(np.stack(want), axis=0).max() > 1e-2 and max(s.max() for s in want) < 0.9
    # printed: one line per image, its top class and score
    for p in predictions:
        best = p['topk'][0]
        assert f'{p["path"]}: {best["name"]} {best["score"]:.4f}' in proc.stdout
    assert '5/5' in proc.stderr  # the progress bar counted the images


def test_class_names_from_the_config_else_the_checkpoint_else_the_index(classifier, tmp_path):
    config, with_meta, without_meta, images = classifier
    image = str(images / 'c.bmp')
    names = ['w', 'x', 'y', 'z']
    set_names = {'test_dataloader.dataset.classes': names}
    for checkpoint, options, want_names in ((without_meta, None, ['0', '1', '2', '3']),
                                            (without_meta, set_names, names),
                                            (with_meta, set_names, names)):
        want = expected_scores(config, checkpoint, [image])[0]
        got = infer_images(config, checkpoint, [image], str(tmp_path / 'out'), topk=10,
                           device='cpu', cfg_options=options)
        order = np.argsort(-want)
        assert [t['index'] for t in got[0]['topk']] == order.tolist()  # all 4, best first
        assert [t['name'] for t in got[0]['topk']] == [want_names[i] for i in order]
        np.testing.assert_allclose([t['score'] for t in got[0]['topk']], want[order], rtol=0,
                                   atol=1e-5)
        assert json.loads((tmp_path / 'out' / 'predictions.json').read_text()) == got


def test_inputs_expand_to_the_expected_files(tmp_path):
    root = tmp_path / 'in'
    write_images(str(root), {'d/b.png': (8, 8), 'd/a.jpg': (8, 8), 'd/e/c.JPG': (8, 8),
                             'd/out/labels/old.png': (8, 8), 'f.png': (8, 8)})
    (root / 'd' / 'readme.md').write_text('x')
    expand = expand_inputs
    d = str(root / 'd')
    assert expand([d]) == [f'{d}/a.jpg', f'{d}/b.png', f'{d}/e/c.JPG', f'{d}/out/labels/old.png']
    # the tool's own output folders are not read back from a folder or a pattern
    assert expand([d], exclude=[f'{d}/out/labels']) == [f'{d}/a.jpg', f'{d}/b.png', f'{d}/e/c.JPG']
    assert expand([f'{root}/**/*.png'], exclude=[f'{d}/out/labels']) == [f'{d}/b.png',
                                                                        f'{root}/f.png']
    assert expand([f'{root}/*']) == [f'{d}/a.jpg', f'{d}/b.png', f'{d}/e/c.JPG',
                                     f'{d}/out/labels/old.png', f'{root}/f.png']
    # each file once, in the order first named
    assert expand([f'{root}/f.png', str(root)]) == [f'{root}/f.png', f'{d}/a.jpg', f'{d}/b.png',
                                                     f'{d}/e/c.JPG', f'{d}/out/labels/old.png']
    # names of the outputs: relative to the common folder, apart where they would collide
    assert output_names([f'{d}/a.jpg', f'{d}/e/c.JPG', f'{root}/f.png', f'{root}/f.jpg']) == [
        'd/a', 'd/e/c', 'f_png', 'f_jpg']
    assert output_names([f'{d}/b.png']) == ['b']


@pytest.mark.parametrize('case', ['missing', 'pattern', 'empty_folder', 'text', 'undecodable'])
def test_bad_inputs_stop_naming_them(classifier, tmp_path, case):
    config, checkpoint, _, images = classifier
    bad = {'missing': str(tmp_path / 'nowhere.jpg'), 'pattern': str(tmp_path / '*.tif'),
           'empty_folder': str(tmp_path / 'empty'), 'text': str(tmp_path / 'fake.jpg'),
           'undecodable': str(tmp_path / 'broken.png')}[case]
    message = {'missing': 'no such file or folder', 'pattern': 'no file matches this pattern',
               'empty_folder': 'folder holds no image files', 'text': 'not an image',
               'undecodable': 'cannot decode this image'}[case]
    os.makedirs(tmp_path / 'empty')
    (tmp_path / 'empty' / 'a.txt').write_text('x')
    (tmp_path / 'fake.jpg').write_text('plain text\n')
    png = (images / 'b' / 'z.png').read_bytes()
    (tmp_path / 'broken.png').write_bytes(png[:len(png) // 3])  # a PNG signature, cut short
    with pytest.raises(InputError) as err:
        infer_images(config, checkpoint, [str(images / 'c.bmp'), bad], str(tmp_path / 'out'),
                     device='cpu')
    assert str(err.value).startswith(f'{bad}: {message}')
    assert '\n' not in str(err.value)
    assert not osp.exists(tmp_path / 'out' / 'predictions.json')


@pytest.mark.tools
def test_missing_input_from_the_command_line(classifier, tmp_path):
    config, checkpoint, _, _ = classifier
    missing = str(tmp_path / 'no' / 'such.jpg')
    proc = run_tool('infer.py', config, checkpoint, missing, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f'mmvpt: {missing}: no such file or folder'  # one line


# -- segmentation ------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def segmenter(tmp_path_factory):
    from mmseg.datasets import ADE20KDataset
    from mmseg.registry import MODELS
    tmp = tmp_path_factory.mktemp('infer_seg')
    backbone = write_random_vit(tmp / 'vit.pth', img_size=64, **SEG_ARCH)
    config = write_tiny_seg_config('cvpt', str(tmp / 'data'), tmp / 'cvpt_tiny.py', backbone)
    init_default_scope('mmseg')
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model)
    model.init_weights()
    meta = {k: ADE20KDataset.METAINFO[k] for k in ('classes', 'palette')}
    checkpoint = save_tuned_only(model, tmp / 'tuned.pth', meta)
    # (aspect ratios up to 2: the test pipeline's resize then leaves no side below the 64
    # pixel crop, which the patch size must divide)
    images = write_images(str(tmp / 'images'), {'one/x.jpg': (50, 70), 'two/x.jpg': (90, 50),
                                                'two/y.png': (64, 64)})
    return config, checkpoint, images


@pytest.mark.tools
def test_segmentation_tool_labels_equal_mmseg_inference(segmenter, tmp_path):
    from mmseg.apis import inference_model, init_model
    from mmseg.datasets import ADE20KDataset
    config, checkpoint, images = segmenter
    before = [open(p, 'rb').read() for p in images]
    out = tmp_path / 'seg'
    run_tool('infer.py', config, checkpoint, osp.dirname(images[0]), osp.dirname(images[1]),
             '--out-dir', str(out))
    predictions = json.loads((out / 'predictions.json').read_text())
    assert [p['path'] for p in predictions] == images
    # same-named files from two folders do not collide
    assert [osp.relpath(p['labels'], out) for p in predictions] == [
        'labels/one/x.png', 'labels/two/x.png', 'labels/two/y.png']
    assert [osp.relpath(p['overlay'], out) for p in predictions] == [
        'overlays/one/x.jpg', 'overlays/two/x.jpg', 'overlays/two/y.jpg']
    model = init_model(config, checkpoint, device='cpu')
    classes = ADE20KDataset.METAINFO['classes']
    for path, p, raw in zip(images, predictions, before):
        size = Image.open(path).size
        label = Image.open(p['labels'])
        assert label.size == size and label.mode == 'L'  # uint8: 150 classes
        label = np.array(label)
        want = inference_model(model, path).pred_sem_seg.data[0].numpy()
        assert np.array_equal(label, want)
        assert len(np.unique(want)) > 1  # a map, not one class everywhere
        counts = np.bincount(want.ravel())
        assert [c['index'] for c in p['classes']] == sorted(np.flatnonzero(counts),
                                                            key=lambda i: -counts[i])
        assert [c['name'] for c in p['classes']] == [classes[c['index']] for c in p['classes']]
        assert sum(c['fraction'] for c in p['classes']) == pytest.approx(1)
        overlay = Image.open(p['overlay'])
        assert overlay.format == 'JPEG' and overlay.size == size and overlay.mode == 'RGB'
        assert open(path, 'rb').read() == raw  # inputs untouched


def test_outputs_never_replace_an_input(segmenter, tmp_path):
    config, checkpoint, images = segmenter
    target = tmp_path / 'labels' / 'x.png'  # where --out-dir tmp_path puts x's labels
    os.makedirs(target.parent)
    target.write_bytes(open(images[2], 'rb').read())
    raw = target.read_bytes()
    with pytest.raises(InputError) as err:
        infer_images(config, checkpoint, [str(target)], str(tmp_path))
    assert str(err.value).startswith(f'{target}: is an input image and would be overwritten')
    assert target.read_bytes() == raw
