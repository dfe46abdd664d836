"""Predict with a checkpoint (tuned-only or full) on images, for mmpretrain and mmseg configs
alike (the host library is taken from the config's ``default_scope``).

    python tools/infer.py CONFIG CHECKPOINT INPUT... [--out-dir DIR] [--topk K]
                                                     [--device cpu|cuda] [--cfg-options k=v ...]

INPUT: image files, folders (every image below them, recursively, sorted by path; files
without an image extension are skipped) and glob patterns (quote them; ``**`` spans folders).
The tool's own output folders (``DIR/labels``, ``DIR/overlays``) are never taken from a
folder or a pattern, so a rerun does not read its outputs as inputs. A path that does not
exist, a pattern or folder without images and a file that is not an image stop the tool
before the model is built, with one line that names it; an image that then fails to decode
stops it naming the image.

Classification (mmpretrain's ``ImageClassificationInferencer``): prints the top-k classes of
every image and writes ``DIR/predictions.json``, a list of
``{"path", "topk": [{"index", "name", "score"}, ...]}`` (softmax scores, best first).

Segmentation (mmseg's ``MMSegInferencer``): for every image, ``DIR/labels/NAME.png`` (the
class index of every pixel, at the image's size; uint8, or uint16 beyond 256 classes) and
``DIR/overlays/NAME.jpg`` (mmseg's visualizer: the classes in colour over the image), and
``DIR/predictions.json``: a list of ``{"path", "labels", "overlay", "classes": [{"index",
"name", "fraction"}, ...]}`` (the classes predicted, by area). NAME is the image's path
relative to the folder that holds all inputs, without its extension (``a/x.jpg`` and
``b/x.jpg`` stay apart), with the extension kept (``x_jpg``) where two would collide.

Class names: the config's test dataset ``classes`` / ``metainfo`` where the config (or
--cfg-options) sets them, else the checkpoint's ``dataset_meta`` (the training data's), else
the test dataset class's defaults, else the index.

Input images are never written to: the tool stops if an output would replace one.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
from mmengine.config import DictAction  # noqa: E402

# What a folder's files must end with to be read (case-insensitive), as mmpretrain's.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
# Segmentation's output folders under --out-dir.
LABELS, OVERLAYS = 'labels', 'overlays'
OUTPUT_DIRS = (LABELS, OVERLAYS)


class InputError(Exception):
    """A problem with the command line's files, reported as one line without traceback."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Predict with a prompt-tuned checkpoint on images (classification top-k '
                    'or segmentation maps)')
    parser.add_argument('config', help='mmpretrain or mmseg config file')
    parser.add_argument('checkpoint', help='checkpoint file (tuned-only or full)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders (recursively) or quoted glob patterns')
    parser.add_argument('--out-dir', help='where predictions.json (and, for segmentation, '
                        'labels/ and overlays/) go; default ./work_dirs/<config name>/infer')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: classes printed and saved per image (default 5)')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        help='default: cuda where available, else cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f'--topk must be at least 1, not {args.topk}')
    return args


# -- inputs -------------------------------------------------------------------------------------
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


# -- model meta ---------------------------------------------------------------------------------
def checkpoint_meta(path):
    """The checkpoint's ``meta`` (memory-mapped: its tensors are not read)."""
    import torch

    from mmvpt.utils import load_local_checkpoint
    try:
        checkpoint = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    except Exception:  # an older pickle format, or objects beyond tensors: read it whole
        checkpoint = load_local_checkpoint(path, map_location='cpu')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def dataset_meta(cfg, checkpoint, registry):
    """``(classes, palette)`` for the predictions, from the first of these that names the
    classes: the config's test dataset (``classes=`` or ``metainfo=``, in the file or from
    --cfg-options), the checkpoint's ``dataset_meta`` (the training data's), the test
    dataset class's defaults (``METAINFO``); ``(None, None)`` if none does."""
    from mmengine.fileio import list_from_file
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


# -- classification -----------------------------------------------------------------------------
def classification(cfg, args, files, out_dir):
    import numpy as np
    import mmpretrain.utils.progress as mmpretrain_progress
    from mmpretrain.apis import ImageClassificationInferencer
    from mmpretrain.registry import DATASETS

    check_outputs_spare_inputs(files, [osp.join(out_dir, 'predictions.json')])
    classes, _ = dataset_meta(cfg, args.checkpoint, DATASETS)
    inferencer = ImageClassificationInferencer(model=cfg, pretrained=args.checkpoint,
                                               device=args.device)
    mmpretrain_progress.disable_progress_bar = True  # ours counts images

    def predict(path):
        scores = inferencer([path])[0]['pred_scores']
        order = np.argsort(-scores, kind='stable')[:args.topk]
        return dict(path=path, topk=[dict(index=int(i), name=class_name(classes, int(i)),
                                          score=float(scores[i])) for i in order])

    predictions = run_over(files, predict)
    for p in predictions:
        print(f'{p["path"]}: ' + ', '.join(f'{t["name"]} {t["score"]:.4f}' for t in p['topk']))
    return predictions


# -- segmentation -------------------------------------------------------------------------------
def random_palette(count):
    """Colours for classes without a palette (mmseg's datasets draw them the same way)."""
    import numpy as np
    state = np.random.get_state()
    np.random.seed(42)
    palette = np.random.randint(0, 255, size=(count, 3)).tolist()
    np.random.set_state(state)
    return palette


def segmentation(cfg, args, files, out_dir):
    import warnings

    import mmcv
    import numpy as np
    from mmseg.apis import MMSegInferencer
    from mmseg.registry import DATASETS
    from PIL import Image

    names = output_names(files)
    labels = [osp.join(out_dir, LABELS, n + '.png') for n in names]
    overlays = [osp.join(out_dir, OVERLAYS, n + '.jpg') for n in names]
    check_outputs_spare_inputs(files, labels + overlays + [osp.join(out_dir, 'predictions.json')])
    classes, palette = dataset_meta(cfg, args.checkpoint, DATASETS)
    with warnings.catch_warnings():
        # without dataset_meta in the checkpoint, mmseg would name Cityscapes' classes
        warnings.filterwarnings('ignore', message='dataset_meta or class names are not saved')
        inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device)
    inferencer.show_progress = False  # ours counts images
    model = inferencer.model
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

    predictions = run_over(list(zip(files, labels, overlays)), predict)
    for p in predictions:
        print(f'{p["path"]}: ' + ', '.join(f'{c["name"]} {c["fraction"]:.1%}'
                                          for c in p['classes'][:5]) + f' -> {p["overlay"]}')
    return predictions


# -- both ---------------------------------------------------------------------------------------
def run_over(items, predict):
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


def main(argv=None):
    args = parse_args(argv)
    try:
        return infer(args)
    except InputError as err:
        sys.exit(f'mmvpt: {err}')


def infer(args):
    for kind, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            raise InputError(f'{path}: no such {kind} file')
    out_dir = args.out_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0], 'infer')
    files = expand_inputs(args.inputs, exclude=[osp.join(out_dir, sub) for sub in OUTPUT_DIRS])
    check_images(files)

    import torch

    from mmvpt.apis import ConfigError, prepare_config
    from mmvpt.models.utils import CheckpointMismatchError
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif args.device == 'cuda' and not torch.cuda.is_available():
        raise InputError('--device cuda: no CUDA device is available here')
    try:
        cfg = prepare_config(args.config, args.cfg_options)
    except ConfigError as err:
        raise InputError(str(err)) from None
    os.makedirs(out_dir, exist_ok=True)
    run = classification if cfg.default_scope == 'mmpretrain' else segmentation
    try:
        predictions = run(cfg, args, files, out_dir)
    except CheckpointMismatchError as err:
        raise InputError(f'{args.checkpoint}: {err}') from None
    from mmvpt.utils.atomic_io import atomic_write
    atomic_write(osp.join(out_dir, 'predictions.json'), json.dumps(predictions, indent=1))
    print(f'{len(predictions)} images; predictions in {osp.join(out_dir, "predictions.json")}')
    return predictions


if __name__ == '__main__':
    main()
