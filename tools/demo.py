"""The demo: generate a small task in the VTAB-1k format, train, test, print the result.

    python tools/demo.py [--config CONFIG] [--work-dir DIR]

No downloads: the data is generated, the backbone is small and trains on CPU in minutes.
"""
import argparse
import glob
import importlib.util
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmvpt.testing import make_vtab_task  # noqa: E402


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'mmvpt_tools_{name}', osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tool, test_tool = _load_tool('train'), _load_tool('test')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=osp.join(ROOT, 'configs/demo/vit-tiny_synthetic.py'))
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs/demo'))
    args = parser.parse_args()

    data_root = osp.join(args.work_dir, 'data')
    task_dir = osp.join(data_root, 'synthetic')
    if not osp.isfile(osp.join(task_dir, 'test.txt')):
        print(f'[demo] generating a 4-class task in the VTAB-1k format under {task_dir}')
        make_vtab_task(data_root, 'synthetic', num_classes=4)
    options = [f'data_root={task_dir}'] + [
        f'{split}_dataloader.dataset.data_root={task_dir}' for split in ('train', 'val', 'test')]
    train_dir = osp.join(args.work_dir, 'train')
    train_tool.main([args.config, '--work-dir', train_dir, '--cfg-options', *options])

    checkpoints = sorted(glob.glob(osp.join(train_dir, 'epoch_*.pth')), key=osp.getmtime)
    if not checkpoints:
        raise RuntimeError(f'training wrote no checkpoint in {train_dir}')
    metrics = test_tool.main([args.config, checkpoints[-1], '--work-dir',
                              osp.join(args.work_dir, 'test'), '--cfg-options', *options])
    accuracy = metrics['accuracy/top1']
    print(f'\n[demo] test top-1 accuracy: {accuracy:.2f}% (chance 25.00%), '
          f'checkpoint {checkpoints[-1]}')


if __name__ == '__main__':
    main()
