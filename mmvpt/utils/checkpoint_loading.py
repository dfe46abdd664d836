"""Load MMEngine checkpoints under torch >= 2.6, where ``torch.load`` defaults to
``weights_only=True``.

MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``; its checkpoints carry a
message hub (``HistoryBuffer`` objects holding numpy arrays) and numpy scalars in ``meta``,
which the weights-only unpickler refuses, so resume, ``load_from`` and ``tools/test.py``
break. We replace MMEngine's loader for local paths with one that first tries the
weights-only unpickler with those few MMEngine/numpy types allowed, and only for a file that
still needs more falls back to the full unpickler (checkpoints are the user's own files).
"""
import logging
import os
import pickle

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader


def _mmengine_safe_globals():
    import numpy as np
    from mmengine.logging import HistoryBuffer

    allowed = [HistoryBuffer, np.ndarray, np.dtype]
    try:  # numpy >= 1.25 names dtype classes; pickles of arrays refer to them
        from numpy import dtypes
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    except ImportError:
        pass
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        allowed += [_reconstruct, scalar]
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar
        allowed += [_reconstruct, scalar]
    return allowed


def load_local_checkpoint(filename, map_location=None):
    """Drop-in for MMEngine's ``load_from_local`` that works under torch >= 2.6."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename!r} does not exist')
    try:
        with torch.serialization.safe_globals(_mmengine_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        print_log(f'{filename} holds objects beyond tensors and MMEngine state '
                  f'({str(err).splitlines()[0]}); loading it with the full unpickler',
                  logger='current', level=logging.DEBUG)
        return torch.load(filename, map_location=map_location, weights_only=False)


def register_checkpoint_loader():
    """Make MMEngine's local-file checkpoint loading go through :func:`load_local_checkpoint`."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)
