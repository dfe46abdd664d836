"""tools/dist_train.sh with 2 gloo processes on CPU: both ranks train and end equal."""
import os.path as osp
import socket

import torch

from .conftest import DEMO_CONFIG, data_options, run_tool


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_process_training_ends_with_identical_weights(tiny_vtab, tmp_path, monkeypatch):
    work_dir = str(tmp_path)
    config = tmp_path / 'dist_config.py'
    config.write_text(f"_base_ = [{DEMO_CONFIG!r}]\n"
                      "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook'])\n"
                      "custom_hooks = [dict(type='DumpParamsHook')]\n")
    monkeypatch.setenv('PORT', str(free_port()))
    run_tool('dist_train.sh', str(config), '2', '--work-dir', work_dir, '--cfg-options',
             *data_options(tiny_vtab), 'train_cfg.max_epochs=1', '--no-validate')

    def load(stage, rank):
        return torch.load(osp.join(work_dir, f'params_{stage}_rank{rank}.pth'))

    after = [load('after', 0), load('after', 1)]
    before = load('before', 0)
    assert after[0]['world_size'] == after[1]['world_size'] == 2
    assert after[0]['params'].keys() == after[1]['params'].keys()
    for name in after[0]['params']:
        torch.testing.assert_close(after[0]['params'][name], after[1]['params'][name],
                                   rtol=0, atol=0)
    # Training changed the weights: the check above is not two untouched copies.
    assert not torch.equal(after[0]['params']['head.fc.weight'], before['params']['head.fc.weight'])
