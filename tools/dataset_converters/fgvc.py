"""Writes the FGVC split files mmvpt.FGVC reads ({train,val,test}.json) into each dataset's
folder, from its official archive layout, or checks existing ones.

    python tools/dataset_converters/fgvc.py data/fgvc [--tasks TASK ...] [--vpt-splits DIR]
        [--seed N]
    python tools/dataset_converters/fgvc.py --verify data/fgvc [--tasks TASK ...]

The task folders are the extracted archives, named as mmvpt.FGVC looks for them:
CUB_200_2011/ (images/, images.txt, image_class_labels.txt, train_test_split.txt), nabirds/
(the same files), OxfordFlower/ (jpg/, imagelabels.mat, setid.mat), Stanford-dogs/ (Images/,
train_list.mat, test_list.mat), Stanford-cars/ (cars_train/, cars_test/, devkit/,
cars_test_annos_withlabels.mat). test is the official test split; val comes out of the
official train split: VPT's files with --vpt-splits DIR (DIR/<folder>/{train,val,test}.json,
checked against the archive and kept as they are), else a class-stratified split of VPT's
size chosen by --seed (not VPT's exact split). Each folder gets a manifest.json.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmvpt.datasets.fgvc import FGVC_TASKS  # noqa: E402
from mmvpt.datasets.preparation import PreparationError, convert_fgvc, verify_fgvc  # noqa: E402

PROG = 'fgvc.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description='Write the FGVC split files from the official archives, or '
        'check them (--verify).')
    parser.add_argument('root', nargs='?', help='the folder holding the datasets\' folders '
                        '(the configs read data/fgvc)')
    parser.add_argument('--verify', metavar='ROOT', help='check ROOT against VPT\'s split '
                        'sizes and the class counts')
    parser.add_argument('--tasks', nargs='+', choices=list(FGVC_TASKS), metavar='TASK',
                        help=f'a subset of {" ".join(FGVC_TASKS)} (default: those whose folder '
                        f'is there)')
    parser.add_argument('--vpt-splits', metavar='DIR', help='VPT\'s split files, as '
                        'DIR/<dataset folder>/{train,val,test}.json (DIR may be ROOT)')
    parser.add_argument('--seed', type=int, default=0,
                        help='the stratified val split\'s seed (default 0)')
    args = parser.parse_args(argv)
    if (args.root is None) == (args.verify is None):
        parser.error('give the datasets\' folder ROOT, or --verify ROOT')
    return args


def present_tasks(root):
    return [task for task, (_, folders, _) in FGVC_TASKS.items()
            if any(osp.isdir(osp.join(root, name)) for name in folders)]


def main(argv=None):
    args = parse_args(argv)
    root = args.verify or args.root
    tasks = args.tasks or present_tasks(root)
    try:
        if not tasks:
            names = ', '.join(name for _, folders, _ in FGVC_TASKS.values() for name in folders)
            raise PreparationError(f'no dataset folder under {root} (looked for {names})')
        if args.verify:
            ok, lines = verify_fgvc(root, tasks)
            print('\n'.join(lines))
            print(f'{root}: {"all" if ok else "not all"} of {len(tasks)} tasks as VPT\'s '
                  f'split sizes')
            return 0 if ok else 1
        results = convert_fgvc(root, tasks, vpt_splits=args.vpt_splits, seed=args.seed)
    except PreparationError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 1
    done = sum(status == 'converted' for status in results.values())
    print(f'{root}: {done} tasks written, {len(results) - done} already complete; check them '
          f'with --verify {root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
