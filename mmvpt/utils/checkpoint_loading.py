"""MMEngine checkpoints under torch >= 2.6, whose ``torch.load`` defaults to
``weights_only=True``.

MMEngine 0.10.7 checkpoints carry a message hub (``HistoryBuffer`` logs holding numpy arrays)
and numpy scalars in ``meta``, which the weights-only unpickler refuses. Importing mmvpt
(:func:`allow_mmengine_checkpoint_types`) makes the logs pickle by value and allows those few
types, so OpenMMLab's own loaders read the checkpoints written from then on. mmvpt's tools
also load local files through :func:`load_local_checkpoint`, which reads older checkpoints
(MMEngine's own pickling) with the full unpickler when the weights-only one refuses them
(checkpoints are the user's own files).
"""
import copyreg
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


def _reduce_history_buffer(buffer):
    # By value: MMEngine's own pickling stores its statistics methods, which unpickle
    # through builtins.getattr, a global the weights-only loader can never allow.
    return type(buffer), (buffer._log_history, buffer._count_history, buffer.max_length)


def allow_mmengine_checkpoint_types():
    """Lets ``torch.load``'s weights-only default (torch >= 2.6) read the checkpoints MMEngine
    writes from now on, so OpenMMLab's own loaders (``load_checkpoint``, the mmpretrain and
    mmseg inferencers) read mmvpt's checkpoints as they are: the few MMEngine and numpy
    types they hold are allowed, and MMEngine's ``HistoryBuffer`` (the message hub's logs)
    is pickled by value."""
    from mmengine.logging import HistoryBuffer
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    if hasattr(torch.serialization, 'add_safe_globals'):  # torch >= 2.4
        torch.serialization.add_safe_globals(_mmengine_safe_globals())


def load_local_checkpoint(filename, map_location=None):
    """Drop-in for MMEngine's ``load_from_local`` that works under any torch (>= 2.1)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename!r} does not exist')
    if not hasattr(torch.serialization, 'add_safe_globals'):
        # torch < 2.4 has no allowlist, and loads everything by default anyway.
        return _read(filename, map_location, weights_only=False)
    # Not torch's safe_globals context: on exit it removes the types from the allowlist
    # that importing mmvpt filled for every loader.
    allow_mmengine_checkpoint_types()
    try:
        return _read(filename, map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # Checkpoints written without mmvpt (MMEngine's own HistoryBuffer pickling).
        print_log(f'{filename} holds objects beyond tensors and MMEngine state '
                  f'({str(err).splitlines()[0]}); loading it with the full unpickler',
                  logger='current', level=logging.DEBUG)
        return _read(filename, map_location, weights_only=False)


class UnreadableCheckpointError(OSError):
    """A checkpoint file that torch cannot read: truncated, corrupt or of another format."""


def _read(filename, map_location, weights_only):
    """``torch.load``, a file it cannot read failing with one sentence that names the file
    (torch's own: ``[Errno 22] Invalid argument``, ``KeyError: 101``, an empty EOFError)."""
    try:
        return torch.load(filename, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError:
        if weights_only:
            raise  # the caller retries with the full unpickler
        reason = 'its objects cannot be unpickled'
    except (OSError, EOFError, KeyError, RuntimeError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else ''
        reason = f'{type(err).__name__}{": " + detail if detail else ""}'
    size = os.path.getsize(filename)
    raise UnreadableCheckpointError(
        f'checkpoint file {filename!r} ({size:,} bytes) cannot be read by torch.load ({reason}): '
        'it is truncated (an interrupted copy or download?), corrupt, or not a torch checkpoint')


def register_checkpoint_loader():
    """Make MMEngine's local-file checkpoint loading go through :func:`load_local_checkpoint`."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)
