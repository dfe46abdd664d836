"""torchrun (``python -m torch.distributed.run``, same arguments) for tools/torchrun.sh, with a
user error as the last line of its output, once.

Each worker's run_cli (mmvpt/utils/launch.py) leaves its one-line user error in the file named
by ``$MMVPT_ERROR_FILE`` instead of printing it; the first rank that fails creates the file,
the others stay quiet. torchrun then ends in ``ChildFailedError`` with its failure summary (a
traceback, the ranks' exit codes, a link to its docs) and logs the SIGTERM it sends to the
other ranks: when the file is there, those say nothing the line does not, so this prints the
line instead, after every worker ended (nothing of theirs can come after it), and exits with
its status. Any other failure is reported by torchrun as usual.

Why not filter torchrun's stderr in the shell script: the workers write to the same stream,
and the summary's wording changes between torch versions; an exception and a file do not.
"""
import logging
import os
import runpy
import sys
import tempfile

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

ERROR_FILE_VAR = 'MMVPT_ERROR_FILE'  # the variable mmvpt.utils.launch.run_cli reads


class _QuietAfterUserError(logging.Filter):
    """Drops torchrun's log records once a worker has reported a user error (its
    ``failed (exitcode: 1)`` / ``Sending process ... SIGTERM`` lines)."""

    def __init__(self, error_file):
        super().__init__()
        self.error_file = error_file

    def filter(self, record):
        return not os.path.exists(self.error_file)


def _quiet_torch_logs(error_file):
    # torch's loggers write through handlers of their own ('torch', 'torch.distributed', ...,
    # not propagating), so the filter goes on every handler there is.
    quiet = _QuietAfterUserError(error_file)
    loggers = [logging.getLogger()] + [logger for logger in logging.root.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(quiet)


def main():
    with tempfile.TemporaryDirectory(prefix='mmvpt-torchrun-') as folder:
        error_file = os.path.join(folder, 'user_error')
        os.environ[ERROR_FILE_VAR] = error_file  # the workers inherit it
        _quiet_torch_logs(error_file)
        try:
            # as `python -m torch.distributed.run` (its own log format and usage text)
            runpy.run_module('torch.distributed.run', run_name='__main__', alter_sys=True)
        except ChildFailedError:
            if not os.path.exists(error_file):
                raise
            with open(error_file) as f:
                status, line = f.read().split('\n', 1)
            sys.stderr.flush()
            sys.stderr.write(line)
            return int(status)
    return 0


if __name__ == '__main__':
    sys.exit(main())
