"""Models, images and class names for inference, beside mmpretrain's and mmseg's
inferencers: what ``tools/infer.py`` and the attention analysis tools load and predict with.

- :func:`load_model`: a config's model with a checkpoint (tuned-only or full), as
  ``tools/test.py`` builds and loads it;
- :func:`dataset_batches`, :func:`preprocess_images`: images through a config's pipeline
  and the model's data preprocessor;
- :func:`expand_inputs`, :func:`check_images`: image files from files, folders and glob
  patterns, checked before any model is built;
- :func:`dataset_meta`, :func:`class_name`: class names from the config, the checkpoint or
  the dataset class;
- :func:`infer_images`: classification top-k or segmentation maps of images, written to a
  folder and returned as data.
"""
import glob
import importlib
import json
import os
import os.path as osp
import sys

# What a folder's files must end with to be read (case-insensitive), as mmpretrain's.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
# Segmentation's output folders under the output folder.
LABELS, OVERLAYS = 'labels', 'overlays'
OUTPUT_DIRS = (LABELS, OVERLAYS)
PREDICTIONS = 'predictions.json'


class InputError(ValueError):
    """A file, folder, config or dataset that inference cannot use, said in one line."""


# -- models -------------------------------------------------------------------------------------
def load_model(config, checkpoint, cfg_options=None, device='cpu'):
    """(model in eval mode, config) as ``tools/test.py`` builds and loads it: a tuned-only
    checkpoint gets the frozen backbone of ``model.backbone.init_cfg``, a merged one
    (``tools/misc/merge_method.py``) a model without the method. ``config``: a config file,
    or a ``Config`` already read (a checkpoint's saved one)."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from mmvpt.utils.launch import prepare_config
    from mmvpt.utils.tuned_checkpoint import fit_config_to_merged
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    cfg = prepare_config(config, cfg_options)
    fit_config_to_merged(cfg, checkpoint)
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    model_cfg = cfg.model
    if cfg.get('data_preprocessor') is not None:  # as MMEngine's runner does
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = registry.MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu', logger='current')
    return model.to(device).eval(), cfg


# -- images -------------------------------------------------------------------------------------
def dataset_batches(cfg, model, split='val', num_images=64, batch_size=None):
    """The first ``num_images`` images of the config's ``{split}_dataloader`` dataset, in
    order, batched through the model's data preprocessor: (B, 3, H, W) tensors."""
    import torch
    from mmengine.dataset import pseudo_collate
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        raise InputError(f'{cfg.filename} has no {split}_dataloader dataset')
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    dataset = registry.DATASETS.build(loader['dataset'])
    count = min(num_images, len(dataset))
    if count == 0:
        raise InputError(f'the {split} dataset of {cfg.filename} is empty')
    batch_size = batch_size or min(loader.get('batch_size', 16), 32)
    for start in range(0, count, batch_size):
        batch = pseudo_collate([dataset[i] for i in range(start, min(start + batch_size, count))])
        with torch.no_grad():
            yield model.data_preprocessor(batch, False)['inputs']


def preprocess_images(cfg, model, paths):
    """(preprocessed (1, 3, H, W) input, (H, W, 3) uint8 RGB picture of it) per image path,
    through the config's test pipeline (annotation loading left out) and data preprocessor."""
    import torch
    from mmengine.dataset import Compose, pseudo_collate
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    steps = [t for t in loader['dataset']['pipeline']
             if not str(t.get('type', '')).endswith('LoadAnnotations')]
    pipeline = Compose(steps)
    preprocessor = model.data_preprocessor
    for path in paths:
        with torch.no_grad():
            inputs = preprocessor(pseudo_collate([pipeline(dict(img_path=path))]), False)['inputs']
        picture = inputs[0].float()
        if getattr(preprocessor, '_enable_normalize', False):
            picture = picture * preprocessor.std + preprocessor.mean
        # OpenMMLab loads BGR; the preprocessor may have turned it RGB (mmpretrain's
        # to_rgb, mmseg's channel_conversion, MMEngine's _channel_conversion)
        converted = any(getattr(preprocessor, name, False)
                        for name in ('to_rgb', 'channel_conversion', '_channel_conversion'))
        if not converted:
            picture = picture.flip(0)
        picture = picture.clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
        yield inputs, picture


def is_image_name(path):
    return path.lower().endswith(IMG_EXTENSIONS)


def _inside(path, folders):
    return any(path == f or path.startswith(f + os.sep) for f in folders)


def images_in(folder, exclude=()):
    """Every image file below ``folder``, sorted by path, those under ``exclude`` (real
    paths) left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _inside(osp.realpath(osp.join(root, d)), exclude)]
        found += [osp.join(root, f) for f in files
                  if is_image_name(f) and not _inside(osp.realpath(osp.join(root, f)), exclude)]
    return sorted(found, key=lambda path: path.split(os.sep))


def expand_inputs(inputs, exclude=()):
    """The image files that ``inputs`` (files, folders, glob patterns) name, in the order
    given, each once; paths under the folders ``exclude`` (the tool's outputs) come from no
    folder or pattern. Raises :class:`InputError` naming an input that gives nothing."""
    exclude = [osp.realpath(f) for f in exclude]
    files = []
    for item in inputs:
        if osp.isdir(item):
            # (a folder named itself is read even if it is an output folder)
            found = images_in(item, [] if _inside(osp.realpath(item), exclude) else exclude)
            if not found:
                raise InputError(f'{item}: folder holds no image files '
                                 f'({", ".join(IMG_EXTENSIONS)})')
        elif osp.exists(item):
            found = [item]
        elif glob.has_magic(item):
            found = []
            for match in sorted(glob.glob(item, recursive=True)):
                if _inside(osp.realpath(match), exclude):
                    continue
                found += images_in(match, exclude) if osp.isdir(match) else [match]
            if not found:
                raise InputError(f'{item}: no file matches this pattern')
        else:
            raise InputError(f'{item}: no such file or folder')
        files += [osp.normpath(f) for f in found]
    seen, unique = set(), []
    for f in files:
        if osp.realpath(f) not in seen:
            seen.add(osp.realpath(f))
            unique.append(f)
    return unique


def check_images(files):
    """Fails naming the first file that is not an image OpenCV (the pipelines' decoder) can
    read; only the file's signature is read here."""
    import cv2
    for f in files:
        if not osp.isfile(f):
            raise InputError(f'{f}: not a file')
        if not os.access(f, os.R_OK):
            raise InputError(f'{f}: not readable')
        if not cv2.haveImageReader(f):
            raise InputError(f'{f}: not an image (no image decoder recognises its content)')


def output_names(files):
    """A distinct name per file, without extension: its path relative to the folder that
    holds them all; where two differ only by extension, the extension is kept (``x_jpg``)."""
    absolute = [osp.abspath(f) for f in files]
    common = osp.commonpath([osp.dirname(a) for a in absolute])
    rel = [osp.relpath(a, common) for a in absolute]
    stems = [osp.splitext(r)[0] for r in rel]
    names, taken = [], set()
    for r, stem in zip(rel, stems):
        name = stem if stems.count(stem) == 1 else stem + '_' + osp.splitext(r)[1].lstrip('.')
        base, n = name, 1
        while name in taken:  # only if a file is literally called x_jpg.png next to x.jpg
            name, n = f'{base}_{n}', n + 1
        taken.add(name)
        names.append(name)
    return names


def check_outputs_spare_inputs(files, outputs):
    """Fails if writing ``outputs`` would replace one of the input images."""
    inputs = {osp.realpath(f): f for f in files}
    for out in outputs:
        if osp.realpath(out) in inputs:
            raise InputError(f'{inputs[osp.realpath(out)]}: is an input image and would be '
                             f'overwritten by an output ({out}); choose another --out-dir')


# -- class names --------------------------------------------------------------------------------
def dataset_meta(cfg, checkpoint, registry):
    """``(classes, palette)`` for the predictions, from the first of these that names the
    classes: the config's test dataset (``classes=`` or ``metainfo=``, in the file or from
    --cfg-options), the checkpoint's ``dataset_meta`` (the training data's), the test
    dataset class's defaults (``METAINFO``); ``(None, None)`` if none does."""
    from mmengine.fileio import list_from_file

    from mmvpt.utils.tuned_checkpoint import checkpoint_meta
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    given = dict(dataset.get('metainfo') or {})
    if dataset.get('classes') is not None:
        given['classes'] = dataset['classes']
    meta = checkpoint_meta(checkpoint)
    saved = dict(meta.get('dataset_meta') or {})
    if not saved.get('classes') and meta.get('CLASSES'):  # OpenMMLab 0.x checkpoints
        saved = dict(classes=meta['CLASSES'], palette=meta.get('PALETTE'))
    try:
        dataset_class = registry.get(dataset.get('type'))
    except Exception:  # no type, or one the registry cannot resolve
        dataset_class = None
    defaults = dict(getattr(dataset_class, 'METAINFO', None) or {})
    for source in (given, saved, defaults):
        classes = source.get('classes')
        if not classes:
            continue
        if isinstance(classes, str):  # a file, one class name a line (as mmpretrain reads it)
            classes = list_from_file(osp.expanduser(classes))
        classes = list(classes)
        palettes = [s.get('palette') for s in (source, given, saved, defaults)]
        palette = next((list(p) for p in palettes if p and len(p) == len(classes)), None)
        return classes, palette
    return None, None


def class_name(classes, index):
    return str(classes[index]) if classes is not None and index < len(classes) else str(index)


def random_palette(count):
    """Colours for classes without a palette (mmseg's datasets draw them the same way)."""
    import numpy as np
    state = np.random.get_state()
    np.random.seed(42)
    palette = np.random.randint(0, 255, size=(count, 3)).tolist()
    np.random.set_state(state)
    return palette


# -- predicting ---------------------------------------------------------------------------------
def merge_into_weights(model, where='--merge'):
    """The model's method folded into its frozen weights (LoRA, SSF, BitFit), or an
    :class:`InputError` that says why it cannot be, prefixed with ``where``."""
    from mmvpt.models.backbones.base import merge_methods
    try:
        merge_methods(model)
    except ValueError as err:
        raise InputError(f'{where}: {err}') from None


def classify_images(cfg, checkpoint, files, out_dir, topk=5, device='cpu', merge=False):
    """Top-``topk`` classes of every image (mmpretrain's ``ImageClassificationInferencer``):
    ``[{"path", "topk": [{"index", "name", "score"}, ...]}]``, softmax scores, best first.
    ``merge``: the method folded into the frozen weights first."""
    import mmpretrain.utils.progress as mmpretrain_progress
    import numpy as np
    from mmpretrain.apis import ImageClassificationInferencer
    from mmpretrain.registry import DATASETS

    check_outputs_spare_inputs(files, [osp.join(out_dir, PREDICTIONS)])
    classes, _ = dataset_meta(cfg, checkpoint, DATASETS)
    inferencer = ImageClassificationInferencer(model=cfg, pretrained=checkpoint, device=device)
    if merge:
        merge_into_weights(inferencer.model)
    mmpretrain_progress.disable_progress_bar = True  # ours counts images

    def predict(path):
        scores = inferencer([path])[0]['pred_scores']
        order = np.argsort(-scores, kind='stable')[:topk]
        return dict(path=path, topk=[dict(index=int(i), name=class_name(classes, int(i)),
                                          score=float(scores[i])) for i in order])

    return predict_each(files, predict)


def segment_images(cfg, checkpoint, files, out_dir, device='cpu', merge=False):
    """Label maps of every image (mmseg's ``MMSegInferencer``), written as
    ``out_dir/labels/NAME.png`` (class index per pixel) and ``out_dir/overlays/NAME.jpg``
    (the classes in colour over the image): ``[{"path", "labels", "overlay", "classes":
    [{"index", "name", "fraction"}, ...]}]``, the classes predicted, by area."""
    import warnings

    import mmcv
    import numpy as np
    from mmseg.apis import MMSegInferencer
    from mmseg.registry import DATASETS
    from PIL import Image

    names = output_names(files)
    labels = [osp.join(out_dir, LABELS, n + '.png') for n in names]
    overlays = [osp.join(out_dir, OVERLAYS, n + '.jpg') for n in names]
    check_outputs_spare_inputs(files, labels + overlays + [osp.join(out_dir, PREDICTIONS)])
    classes, palette = dataset_meta(cfg, checkpoint, DATASETS)
    with warnings.catch_warnings():
        # without dataset_meta in the checkpoint, mmseg would name Cityscapes' classes
        warnings.filterwarnings('ignore', message='dataset_meta or class names are not saved')
        inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=device)
    inferencer.show_progress = False  # ours counts images
    model = inferencer.model
    if merge:
        merge_into_weights(model)
    num_classes = getattr(model.decode_head, 'num_classes', None) or len(classes or ())
    if classes is None or len(classes) < num_classes:  # unnamed classes: their index
        classes = list(classes or ()) + [str(i) for i in range(len(classes or ()), num_classes)]
        palette = None
    # what mmseg's visualizer draws the overlays with
    model.dataset_meta = dict(classes=classes, palette=palette or random_palette(len(classes)))
    dtype = np.uint8 if num_classes <= 256 else np.uint16

    def predict(item):
        path, label_file, overlay_file = item
        result = inferencer([path], return_vis=True)
        label, overlay = result['predictions'], result['visualization']
        os.makedirs(osp.dirname(label_file), exist_ok=True)
        Image.fromarray(label.astype(dtype)).save(label_file)
        mmcv.imwrite(overlay[..., ::-1], overlay_file)  # RGB -> BGR, the folder made
        counts = np.bincount(label.ravel())
        present = [int(i) for i in np.argsort(-counts, kind='stable') if counts[i]]
        return dict(path=path, labels=label_file, overlay=overlay_file,
                    classes=[dict(index=i, name=class_name(classes, i),
                                  fraction=float(counts[i] / label.size)) for i in present])

    return predict_each(list(zip(files, labels, overlays)), predict)


def predict_each(items, predict):
    """``predict`` on every item, with a progress bar on stderr; an input image that fails
    to decode is named."""
    import cv2
    from mmengine.utils import track_iter_progress
    results = []
    try:
        for item in track_iter_progress(items, file=sys.stderr):
            try:
                results.append(predict(item))
            except Exception:
                path = item[0] if isinstance(item, tuple) else item
                if cv2.imread(path, cv2.IMREAD_UNCHANGED) is None:
                    raise InputError(f'{path}: cannot decode this image') from None
                raise
    except BaseException:
        sys.stderr.write('\n')  # the message on a line of its own, not after the bar
        raise
    return results


def infer_images(config, checkpoint, inputs, out_dir, topk=5, device=None, cfg_options=None,
                 merge=False):
    """Predicts with ``checkpoint`` (tuned-only or full) of ``config`` (mmpretrain or mmseg,
    by its ``default_scope``) on the images ``inputs`` name (files, folders, glob patterns;
    see :func:`expand_inputs`) and writes ``out_dir/predictions.json``. ``merge``: the
    method (LoRA, SSF, BitFit) is folded into the frozen weights first, as deployed.

    Returns the predictions, one dict per image (:func:`classify_images`,
    :func:`segment_images`). Files, inputs, the device, the config and a checkpoint that
    does not fit it fail with an :class:`InputError` of one line, before any output is
    written; input images are never written to."""
    for kind, path in (('config', config), ('checkpoint', checkpoint)):
        if not osp.isfile(path):
            raise InputError(f'{path}: no such {kind} file')
    files = expand_inputs(inputs, exclude=[osp.join(out_dir, sub) for sub in OUTPUT_DIRS])
    check_images(files)

    import torch

    from mmvpt.models.utils import CheckpointMismatchError
    from mmvpt.utils.atomic_io import atomic_write
    from mmvpt.utils.launch import ConfigError, prepare_config
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda' and not torch.cuda.is_available():
        raise InputError('--device cuda: no CUDA device is available here')
    from mmvpt.utils.tuned_checkpoint import fit_config_to_merged
    try:
        cfg = prepare_config(config, cfg_options)
    except ConfigError as err:
        raise InputError(str(err)) from None
    fit_config_to_merged(cfg, checkpoint)
    os.makedirs(out_dir, exist_ok=True)
    try:
        if cfg.default_scope == 'mmpretrain':
            predictions = classify_images(cfg, checkpoint, files, out_dir, topk, device, merge)
        else:
            predictions = segment_images(cfg, checkpoint, files, out_dir, device, merge)
    except CheckpointMismatchError as err:
        raise InputError(f'{checkpoint}: {err}') from None
    atomic_write(osp.join(out_dir, PREDICTIONS), json.dumps(predictions, indent=1))
    return predictions

