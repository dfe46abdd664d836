"""Test-only: reading what tools/protocol.py's runs left, independently of mmvpt's readers."""
import glob
import json
import os.path as osp

from mmengine.config import Config


def read_json(path):
    with open(path) as f:
        return json.load(f)


def only(paths):
    assert len(paths) == 1, paths
    return paths[0]


def dumped_config(run_dir):
    """The config MMEngine saved for a run (``<run dir>/<config file name>``, the only .py
    there): what the run really trained with."""
    return Config.fromfile(only(glob.glob(osp.join(run_dir, '*.py'))),
                           import_custom_modules=False)


def last_recorded_val(run_dir):
    """The last val accuracy of a run's (only) launch, from its scalars file."""
    scalars = only(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json')))
    with open(scalars) as f:
        lines = [json.loads(line) for line in f]
    return [line['accuracy/top1'] for line in lines if 'accuracy/top1' in line][-1]
