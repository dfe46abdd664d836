"""What the VTAB-1k and FGVC preparation share: one-line errors, the manifest written next to
the data, image formats told by their bytes, and task folders that appear only when whole."""
import contextlib
import datetime
import hashlib
import json
import os
import os.path as osp
import shutil

from mmvpt.utils.atomic_io import atomic_write

MANIFEST = 'manifest.json'
MANIFEST_VERSION = 1
PARTIAL_SUFFIX = '.partial'


class PreparationError(RuntimeError):
    """A problem with the sources or the output, said in one line (the tools print it as
    ``<tool>: error: <message>``)."""


def one_line(err):
    """An exception's message on one line, for errors raised by the libraries we call."""
    text = ' '.join(str(err).split())
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def image_format(path):
    """'png', 'jpeg', 'empty' or 'other', from the file's first bytes (not its name: a
    '.png' holding JPEG data is JPEG)."""
    with open(path, 'rb') as f:
        head = f.read(8)
    if not head:
        return 'empty'
    if head.startswith(b'\x89PNG\r\n\x1a\n'):
        return 'png'
    if head.startswith(b'\xff\xd8\xff'):
        return 'jpeg'
    return 'other'


def write_manifest(folder, manifest):
    """Writes ``folder/manifest.json`` (whole or not at all) with the format version and
    the time added."""
    manifest = dict(manifest_version=MANIFEST_VERSION,
                    written=datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec='seconds'),
                    **manifest)
    atomic_write(osp.join(folder, MANIFEST), json.dumps(manifest, indent=2) + '\n')


def read_manifest(folder):
    """``folder/manifest.json`` as a dict, None when there is none."""
    path = osp.join(folder, MANIFEST)
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise PreparationError(f'{path}: not a readable manifest ({one_line(err)})') from None
    if not isinstance(manifest, dict):
        raise PreparationError(f'{path}: not a readable manifest (expected a JSON object)')
    return manifest


def changed_lists(folder, manifest):
    """What differs between the list files of ``folder`` and the sha256 the manifest
    recorded for them, one sentence each."""
    changed = []
    for name, recorded in manifest.get('list_sha256', {}).items():
        path = osp.join(folder, name)
        if not osp.isfile(path):
            changed.append(f'{name} is missing (manifest.json lists it)')
        elif sha256_file(path) != recorded:
            changed.append(f'{name} differs from its sha256 in manifest.json')
    return changed


@contextlib.contextmanager
def staged_folder(final_dir):
    """Yields ``<final_dir>.partial`` to write a task into, renamed to ``final_dir`` when the
    block ends without an error. A run killed inside the block leaves only the ``.partial``
    folder, which no dataset reads (its name is not a task's) and the next run replaces."""
    partial = final_dir + PARTIAL_SUFFIX
    if osp.exists(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.rename(partial, final_dir)
