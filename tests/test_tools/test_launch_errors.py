"""A user error ends a tool with one line, also when it is raised in a DataLoader worker and
under tools/dist_train.sh (2 gloo processes): printed once, last, after torchrun ended,
without torchrun's failure summary; the traceback in the log file."""
import argparse
import os
import os.path as osp

import pytest
import torch
from torch.utils.data import DataLoader

from mmvpt.testing import make_vtab_task
from mmvpt.utils import launch
from mmvpt.utils.data_errors import DataError
from mmvpt.utils.launch import ERROR_FILE_VAR, run_cli

from tests.conftest import DEMO_CONFIG, free_port, run_tool
from tests.test_datasets.test_data_checks import image, list_file_config, write_random_bytes


class BrokenSample(torch.utils.data.Dataset):
    """Sample 2 fails as mmvpt's datasets fail on an undecodable image."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            try:
                raise AssertionError('failed to load image: x/000002.jpg')
            except AssertionError as error:
                raise DataError('list.txt:3: sample x/000002.jpg failed to load: '
                                f'AssertionError: {error}') from error
        return index


@pytest.fixture
def logged(monkeypatch):
    """run_cli's log file, faked: the tracebacks it would have written."""
    tracebacks = []

    def log_traceback():
        import traceback
        tracebacks.append(traceback.format_exc())
        return 'work/run.log'

    monkeypatch.setattr(launch, '_log_traceback', log_traceback)
    return tracebacks


def test_a_data_loader_worker_error_is_its_own_message(logged, capsys):
    def main(argv):
        for _ in DataLoader(BrokenSample(), batch_size=1, num_workers=1):
            pass

    with pytest.raises(SystemExit) as exit_:
        run_cli(main)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        'mmvpt: DataError: list.txt:3: sample x/000002.jpg failed to load: AssertionError: '
        'failed to load image: x/000002.jpg (traceback in work/run.log)\n')
    # the log gets the worker's traceback, which the DataLoader put in the message
    assert 'Caught DataError in DataLoader worker process 0' in logged[0]
    assert 'in __getitem__' in logged[0]


@pytest.mark.parametrize('message', [
    'a message that names no worker',
    'Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
    'last):\n  File "x.py", line 1, in f\nValueError: another type than the one raised'])
def test_other_messages_are_kept(message):
    assert launch._worker_message(message, DataError(message)) == message


def test_under_the_dist_launcher_the_first_rank_leaves_its_line_in_the_error_file(
        tmp_path, monkeypatch, logged, capsys):
    error_file = tmp_path / 'user_error'
    monkeypatch.setenv(ERROR_FILE_VAR, str(error_file))

    def fail(error):
        def main(argv):
            raise error
        with pytest.raises(SystemExit) as exit_:
            run_cli(main)
        return exit_.value.code

    assert fail(ValueError('lr=-1 cannot work')) == 1
    first = '1\nmmvpt: ValueError: lr=-1 cannot work (traceback in work/run.log)\n'
    assert error_file.read_text() == first
    # a later rank's user error, and its broken collective: nothing printed, the file kept
    assert fail(KeyError('other')) == 1
    assert fail(RuntimeError('Connection closed by peer')) == 1
    assert error_file.read_text() == first
    assert capsys.readouterr().err == ''
    assert len(logged) == 3  # each rank's traceback went to its log

    # a wrong option: one line, argparse's exit status; argparse is left as it was
    error_file.unlink()
    parser_error = argparse.ArgumentParser.error

    def parse(argv):
        parser = argparse.ArgumentParser(prog='train.py')
        parser.add_argument('--work-dir')
        parser.parse_args(['--wrok-dir', 'x'])

    with pytest.raises(SystemExit) as exit_:
        run_cli(parse)
    assert exit_.value.code == 2
    assert error_file.read_text() == (
        '2\nmmvpt: train.py: error: unrecognized arguments: --wrok-dir x '
        '(usage: train.py --help)\n')
    assert argparse.ArgumentParser.error is parser_error
    assert capsys.readouterr().err == ''


def test_another_rank_leaves_rank_0_the_line_of_an_error_both_meet(tmp_path, monkeypatch, logged):
    import threading
    error_file = tmp_path / 'user_error'
    monkeypatch.setenv(ERROR_FILE_VAR, str(error_file))
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setattr(launch, 'RANK0_GRACE_S', 2.)

    def fail():
        def main(argv):
            raise ValueError('lr=-1 cannot work')
        with pytest.raises(SystemExit) as exit_:
            run_cli(main)
        return exit_.value.code

    rank_0 = '1\nmmvpt: ValueError: lr=-1 cannot work (traceback in work/rank0.log)\n'
    rank_1 = '1\nmmvpt: ValueError: lr=-1 cannot work (traceback in work/run.log)\n'
    claimed = []

    def rank_0_reports():  # a moment later, claiming the file as _report does
        fd = os.open(error_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, rank_0.encode())
        os.close(fd)
        claimed.append(True)
    timer = threading.Timer(0.3, rank_0_reports)
    timer.start()
    assert fail() == 1
    timer.join()
    assert claimed == [True] and error_file.read_text() == rank_0
    # rank 0 reports nothing within the grace: this rank's own line
    error_file.unlink()
    monkeypatch.setattr(launch, 'RANK0_GRACE_S', 0.2)
    assert fail() == 1 and error_file.read_text() == rank_1


def test_without_the_dist_launcher_other_errors_raise(monkeypatch, tmp_path):
    monkeypatch.delenv(ERROR_FILE_VAR, raising=False)

    def main(argv):
        raise RuntimeError('a bug')

    with pytest.raises(RuntimeError, match='a bug'):
        run_cli(main)


# -- tools/dist_train.sh, 2 gloo processes -------------------------------------------------------
def assert_ends_with_one_line(proc, status=1):
    """The last line of stderr is the only ``mmvpt:`` line, with nothing of torchrun's
    failure summary or a traceback; returns it."""
    lines = proc.stderr.rstrip('\n').split('\n')
    assert proc.returncode == status, proc.stderr[-3000:]
    assert [line for line in lines if line.startswith('mmvpt: ')] == lines[-1:], proc.stderr
    for text in ('ChildFailedError', 'Root Cause', 'Traceback', 'elastic/errors.html'):
        assert text not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


@pytest.mark.tools
@pytest.mark.parametrize('case', ['missing config', 'wrong option', 'typo in a method option'])
def test_dist_train_ends_a_user_error_with_one_line(case, tmp_path, monkeypatch):
    monkeypatch.setenv('PORT', str(free_port()))
    work = ['--work-dir', str(tmp_path / 'work')]
    if case == 'missing config':
        proc = run_tool('dist_train.sh', str(tmp_path / 'nonexist.py'), '2', *work, check=False)
        assert assert_ends_with_one_line(proc) == (
            f"mmvpt: FileNotFoundError: config file '{tmp_path / 'nonexist.py'}' does not exist")
    elif case == 'wrong option':
        proc = run_tool('dist_train.sh', DEMO_CONFIG, '2', '--wrok-dir', 'x', check=False)
        assert assert_ends_with_one_line(proc, status=2) == (
            'mmvpt: train.py: error: unrecognized arguments: --wrok-dir x '
            '(usage: train.py --help)')
    else:
        proc = run_tool('dist_train.sh', DEMO_CONFIG, '2', *work, '--cfg-options',
                        'model.backbone.prompt.type=mmvpt.CVPT',
                        'model.backbone.prompt.num_token=5', check=False)
        last = assert_ends_with_one_line(proc)
        assert last.startswith("mmvpt: ValueError: CVPT has no option 'num_token'; "
                               "did you mean 'num_tokens'?")
        log_file = last.rsplit(' (traceback in ', 1)[1][:-1]
        assert log_file.startswith(str(tmp_path / 'work'))
        with open(log_file) as f:
            assert 'Traceback (most recent call last)' in f.read()


@pytest.mark.tools
def test_dist_train_ends_a_corrupt_image_read_in_a_worker_with_one_line(tmp_path, monkeypatch):
    task = make_vtab_task(str(tmp_path / 'data'), 'corrupt', num_classes=4, num_train=16,
                          num_val=8, num_test=4, size=32)
    corrupt = image(task, 'train800', 7)  # line 8 of train800.txt
    write_random_bytes(corrupt)
    config = list_file_config(tmp_path, task)
    monkeypatch.setenv('PORT', str(free_port()))
    proc = run_tool('dist_train.sh', config, '2', '--work-dir', str(tmp_path / 'work'),
                    '--no-validate', '--cfg-options', 'train_cfg.max_epochs=1',
                    'train_dataloader.num_workers=1', 'train_dataloader.batch_size=8',
                    check=False)
    last = assert_ends_with_one_line(proc)
    assert last.startswith(f'mmvpt: DataError: {task}/train800.txt:8: sample {corrupt} failed '
                           'to load: ')
    assert 'DataLoader worker' not in last
    log_file = last.rsplit(' (traceback in ', 1)[1][:-1]
    assert osp.dirname(osp.dirname(log_file)) == str(tmp_path / 'work')
    with open(log_file) as f:
        log = f.read()
    assert 'Caught DataError in DataLoader worker process 0' in log  # the worker's traceback
