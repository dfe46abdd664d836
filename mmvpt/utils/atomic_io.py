"""Files that are either written whole or not at all.

A process killed while it writes (a cluster job past its time, an OOM kill) would otherwise
leave a truncated checkpoint that ``--resume`` then picks up. Everything is written to a
temporary file in the destination's folder and renamed over it, which POSIX makes atomic.
"""
import os
import os.path as osp
import tempfile

from mmengine.fileio.backends import LocalBackend, register_backend


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it

def atomic_write(path, data):
    """Writes ``data`` (bytes or str) to ``path`` through a temporary file in the same
    folder: ``path`` holds the old content or the new one, never a part of it."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.partial', dir=folder)
    try:
        with os.fdopen(fd, 'wb' if isinstance(data, bytes) else 'w') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes 0600)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend with :func:`atomic_write` for ``put`` / ``put_text``:
    every checkpoint MMEngine saves to a local path goes through it."""

    def put(self, obj, filepath):
        atomic_write(filepath, obj)

    def put_text(self, obj, filepath, encoding='utf-8'):
        atomic_write(filepath, obj.encode(encoding))


def use_atomic_local_backend():
    """Makes MMEngine's file backend for local paths :class:`AtomicLocalBackend`."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
