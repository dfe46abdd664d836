"""Predict with a checkpoint (tuned-only or full) on images, for mmpretrain and mmseg configs
alike (the host library is taken from the config's ``default_scope``).

    python tools/infer.py CONFIG CHECKPOINT INPUT... [--out-dir DIR] [--topk K] [--merge]
                                                     [--device cpu|cuda] [--cfg-options k=v ...]

``--merge`` folds a LoRA / SSF / BitFit method into the frozen weights first (the deployed
model's cost, the same predictions).

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

Input images are never written to: the tool stops if an output would replace one. The
work is done by :func:`mmvpt.apis.inference.infer_images`; this script parses the command
line and prints the predictions.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmengine.config import DictAction  # noqa: E402

from mmvpt.apis.inference import PREDICTIONS, InputError, infer_images  # noqa: E402


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
    parser.add_argument('--merge', action='store_true', help='fold the method (LoRA, SSF, '
                        'BitFit) into the frozen weights first')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        help='default: cuda where available, else cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f'--topk must be at least 1, not {args.topk}')
    return args


def describe(prediction):
    """One printed line of an image's prediction."""
    if 'topk' in prediction:
        return f'{prediction["path"]}: ' + ', '.join(f'{t["name"]} {t["score"]:.4f}'
                                                     for t in prediction['topk'])
    return (f'{prediction["path"]}: ' + ', '.join(f'{c["name"]} {c["fraction"]:.1%}'
                                                   for c in prediction['classes'][:5])
            + f' -> {prediction["overlay"]}')


def main(argv=None):
    args = parse_args(argv)
    out_dir = args.out_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0], 'infer')
    try:
        predictions = infer_images(args.config, args.checkpoint, args.inputs, out_dir,
                                   topk=args.topk, device=args.device,
                                   cfg_options=args.cfg_options, merge=args.merge)
    except InputError as err:
        sys.exit(f'mmvpt: {err}')
    for prediction in predictions:
        print(describe(prediction))
    print(f'{len(predictions)} images; predictions in {osp.join(out_dir, PREDICTIONS)}')
    return predictions


if __name__ == '__main__':
    main()
