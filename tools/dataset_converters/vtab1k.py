"""Builds the 19 VTAB-1k tasks from tensorflow-datasets into the folder layout mmvpt.VTAB1k
reads, with VPT's splits, or checks an existing folder.

    python tools/dataset_converters/vtab1k.py data/vtab-1k [--tasks TASK ...] [--tfds-dir DIR]
        [--manual-dir DIR] [--format png|jpeg] [--num-workers N]
    python tools/dataset_converters/vtab1k.py --verify data/vtab-1k [--tasks TASK ...]

Writes ``<root>/<task>/{train800,val200,train800val200,test}.txt``, ``images/`` and
``manifest.json`` (tfds name and version, split sizes and slices, label rule, image format,
sha256 of each list). PNG by default: the pixels tfds decodes, exactly; ``--format jpeg``
writes ``.jpg`` files as other PEFT code has them, lossy. A task already complete is
skipped; one being written lives in ``<root>/<task>.partial`` until it is whole.
Needs ``pip install -r requirements/extras/data.txt`` (and, to generate the datasets from
their downloads, requirements/extras/data-tensorflow.txt). Before any download it checks what
each task still needs (TensorFlow, manual files, the download hosts reachable: one short
probe each) and stops with what is missing and the offline routes: the archives put into
the manual folder, a --tfds-dir where the datasets are prepared, or an existing VTAB-1k copy
(--verify). Split definitions, versions and label rules:
mmvpt/datasets/preparation/vtab.py; README, "Preparing the data".
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmvpt.datasets.preparation import PreparationError, convert_vtab, verify_vtab  # noqa: E402
from mmvpt.datasets.vtab import VTAB_TASKS, canonical_vtab_task  # noqa: E402

PROG = 'vtab1k.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description='Build VTAB-1k from tensorflow-datasets with VPT\'s splits, or '
        'check a VTAB-1k folder (--verify).')
    parser.add_argument('root', nargs='?', help='output folder (the configs read data/vtab-1k)')
    parser.add_argument('--verify', metavar='ROOT', help='check ROOT (this tool\'s output or a '
                        'shared copy) against VPT\'s split sizes and the class counts')
    parser.add_argument('--tasks', nargs='+', metavar='TASK',
                        help=f'a subset (default: all 19): {" ".join(VTAB_TASKS)}')
    parser.add_argument('--tfds-dir', default=os.environ.get(
        'TFDS_DATA_DIR', osp.join('~', 'tensorflow_datasets')),
                        help='where tfds keeps downloads and prepared datasets (default: '
                        '$TFDS_DATA_DIR or ~/tensorflow_datasets)')
    parser.add_argument('--manual-dir', help='manual downloads (resisc45, diabetic_retinopathy), '
                        'and any task\'s archives fetched elsewhere, under the names tfds '
                        'gives them (default: <tfds-dir>/downloads/manual)')
    parser.add_argument('--format', choices=('png', 'jpeg'), default='png',
                        help='png: lossless, tfds\' pixels (default); jpeg: lossy .jpg files')
    parser.add_argument('--num-workers', type=int, default=min(8, os.cpu_count() or 1),
                        help='threads encoding and writing images (default: cores, at most 8)')
    args = parser.parse_args(argv)
    if (args.root is None) == (args.verify is None):
        parser.error('give the output folder ROOT, or --verify ROOT')
    try:
        args.tasks = [canonical_vtab_task(task) for task in args.tasks or VTAB_TASKS]
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.verify:
            ok, lines = verify_vtab(args.verify, args.tasks)
            print('\n'.join(lines))
            print(f'{args.verify}: {"all" if ok else "not all"} of {len(args.tasks)} tasks as '
                  f'VPT\'s splits')
            return 0 if ok else 1
        tfds_dir = osp.expanduser(args.tfds_dir)
        results = convert_vtab(args.root, args.tasks, tfds_dir,
                               manual_dir=args.manual_dir and osp.expanduser(args.manual_dir),
                               image_format=args.format, num_workers=args.num_workers)
    except PreparationError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 1
    done = sum(status == 'converted' for status in results.values())
    print(f'{args.root}: {done} tasks written, {len(results) - done} already complete; '
          f'check them with --verify {args.root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
