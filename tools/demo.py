"""The demo: pretrain a tiny ViT, then prompt-tune it with CVPT on a related task, on CPU.

    python tools/demo.py [--work-dir DIR] [--verbose]

No downloads: both tasks are generated in the VTAB-1k format (the class is the position of
a bright square on a ring: 8 positions in the first task, 4 in-between ones in the second).
Stage 1 trains the tiny ViT fully on the first task; its checkpoint is the frozen backbone of
stage 2, where only CVPT's prompts and the head train, and of stage 3, E2VPT with token and
segment pruning and rewinding in one run. Each is tested on the test split.

The terminal shows a line per stage and the summary; the full log (MMEngine's, about 1,600
lines) goes to ``DIR/demo.log`` (``--verbose``: to the terminal, as it happens). torch runs
one thread unless OMP_NUM_THREADS says otherwise.
"""
import argparse
import contextlib
import glob
import math
import os
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

import torch  # noqa: E402

from mmvpt.testing import make_vtab_task  # noqa: E402
from mmvpt.utils.launch import run_cli  # noqa: E402

from tools import test as test_tool  # noqa: E402
from tools import train as train_tool  # noqa: E402

PRETRAIN_CONFIG = osp.join(ROOT, 'configs/demo/vit-tiny_synthetic.py')
TUNE_CONFIG = osp.join(ROOT, 'configs/demo/cvpt_vit-tiny_synthetic.py')
PRUNE_CONFIG = osp.join(ROOT, 'configs/demo/e2vpt_vit-tiny_synthetic.py')


def data_options(task_dir):
    return [f'{split}_dataloader.dataset.data_root={task_dir}'
            for split in ('train', 'val', 'test')]


def latest_checkpoint(work_dir):
    checkpoints = sorted(glob.glob(osp.join(work_dir, 'epoch_*.pth')), key=osp.getmtime)
    if not checkpoints:
        raise RuntimeError(f'training wrote no checkpoint in {work_dir}')
    return checkpoints[-1]


@contextlib.contextmanager
def logged_to(path, verbose=False):
    """Within it, whatever the process writes to stdout and stderr (MMEngine's log, warnings)
    goes to ``path`` (with ``verbose``: nothing is redirected, all of it on the terminal);
    yields ``say(line)``, which writes a line to both. On a failure the terminal gets the
    log's last lines and its path, then the traceback."""
    if verbose:
        yield print
        return
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.dup(1), os.dup(2)
    log = open(path, 'w')

    def say(line):
        print(line, flush=True)  # into the log
        os.write(terminal[0], (line + '\n').encode())
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    failed = False
    try:
        yield say
    except BaseException:
        failed = True
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in ((1, terminal[0]), (2, terminal[1])):
            os.dup2(saved, fd)
            os.close(saved)
        log.close()
        if failed:  # the traceback follows on stderr
            with open(path) as f:
                tail = f.readlines()[-20:]
            print(f'[demo] failed; the last lines of {path}:\n' + ''.join(tail), file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs/demo'))
    parser.add_argument('--verbose', action='store_true',
                        help='the full log on the terminal too (else only in WORK_DIR/demo.log)')
    args = parser.parse_args(argv)
    if 'OMP_NUM_THREADS' not in os.environ:
        # The tiny ViT gains nothing from more threads, and where other jobs share the cores
        # their spin-waiting costs tenfold: 35 s with one thread, 12 minutes with two (2 loaded
        # cores).
        torch.set_num_threads(1)
    os.makedirs(args.work_dir, exist_ok=True)
    log_path = osp.join(args.work_dir, 'demo.log')
    if not args.verbose:
        print(f'[demo] a line per stage here; the full log in {log_path}', flush=True)
    started = time.perf_counter()
    with logged_to(log_path, args.verbose) as say:
        results = run_stages(args.work_dir, say)
    cvpt_accuracy, cvpt_report, cvpt_checkpoint = results['cvpt']
    e2vpt_accuracy, e2vpt_report, _ = results['e2vpt']
    summary = [
        f'\n[demo] CVPT test top-1 accuracy: {cvpt_accuracy:.2f}% (chance 25.00%)',
        f'[demo] CVPT {cvpt_report}',
        f'[demo] CVPT checkpoint (tuned tensors only): {cvpt_checkpoint} '
        f'({osp.getsize(cvpt_checkpoint) / 1024:.0f} KiB)',
        f'[demo] E2VPT after pruning + rewinding: test top-1 accuracy {e2vpt_accuracy:.2f}%, '
        f'{e2vpt_report}',
        f'[demo] E2VPT pruning result: {osp.join(args.work_dir, "e2vpt", "prompt_pruning.json")}',
        f'[demo] done in {time.perf_counter() - started:.0f} s; the full log: {log_path}'
        if not args.verbose else f'[demo] done in {time.perf_counter() - started:.0f} s']
    if not args.verbose:
        with open(log_path, 'a') as f:
            f.write('\n'.join(summary) + '\n')
    print('\n'.join(summary))


def run_stages(work_dir, say):
    """The demo's data and its three stages; {name: (test accuracy, parameter report,
    checkpoint)} of the two tuning stages. ``say(line)``: a line for the terminal."""
    data_root = osp.join(work_dir, 'data')
    tasks = {}
    for task, num_classes, offset in (('ring8', 8, 0.), ('ring4', 4, math.pi / 4)):
        tasks[task] = osp.join(data_root, task)
        if not osp.isfile(osp.join(tasks[task], 'test.txt')):
            say(f'[demo] generating task {task!r} in the VTAB-1k format under {tasks[task]}')
            make_vtab_task(data_root, task, num_classes=num_classes, angle_offset=offset)

    say('[demo] stage 1: train the tiny ViT fully on task "ring8" (the "pretrained" backbone)')
    pretrain_dir = osp.join(work_dir, 'pretrain')
    train_tool.main([PRETRAIN_CONFIG, '--work-dir', pretrain_dir, '--cfg-options',
                     *data_options(tasks['ring8']), 'model.head.num_classes=8',
                     'data_preprocessor.num_classes=8', 'train_cfg.max_epochs=16',
                     'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4'])
    backbone = latest_checkpoint(pretrain_dir)

    options = data_options(tasks['ring4']) + [f'model.backbone.init_cfg.checkpoint={backbone}']
    results = {}
    for stage, name, config in ((2, 'cvpt', TUNE_CONFIG), (3, 'e2vpt', PRUNE_CONFIG)):
        say(f'[demo] stage {stage}: {name} on the frozen backbone, task "ring4"')
        stage_dir = osp.join(work_dir, name)
        train_tool.main([config, '--work-dir', stage_dir, '--cfg-options', *options])
        checkpoint = latest_checkpoint(stage_dir)
        metrics = test_tool.main([config, checkpoint, '--work-dir', osp.join(stage_dir, 'test'),
                                  '--cfg-options', *options])
        results[name] = (metrics['accuracy/top1'], last_parameter_report(stage_dir), checkpoint)
    return results


def last_parameter_report(work_dir):
    """The last parameter report the training in ``work_dir`` logged (after pruning, if any)."""
    reports = []
    for log in sorted(glob.glob(osp.join(work_dir, '*', '*.log'))):
        with open(log) as f:
            reports += [line.split('tuned parameters: ', 1)[1].strip() for line in f
                        if 'tuned parameters: ' in line]
    return f'tuned parameters: {reports[-1]}' if reports else 'no parameter report logged'


if __name__ == '__main__':
    run_cli(main, name='demo')
