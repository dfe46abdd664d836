"""Checks an existing VTAB-1k or FGVC folder (written by the converters, or a shared copy)
against VPT's split sizes and the class counts, and says how its images are encoded.

Each task gives one line, ``<task>: ok: ...`` or ``<task>: FAIL: <problems>; ...``.
"""
import collections
import os.path as osp

from mmvpt.datasets.fgvc import FGVC_TASKS
from mmvpt.datasets.vtab import VTAB_SPLITS, VTAB_TASKS, read_list_file

from .common import PreparationError, changed_lists, image_format, read_manifest
from .fgvc import FGVC_SOURCES, SPLITS, read_split_file
from .vtab import VTAB_SOURCES, vtab_split_sizes


def describe_formats(paths):
    """How the files are encoded, told by their bytes; JPEG called out as lossy."""
    formats = collections.Counter(image_format(path) for path in paths)
    parts = []
    for name, count in formats.most_common():
        label = dict(png='PNG', jpeg='JPEG-encoded', empty='empty', other='not PNG/JPEG')[name]
        parts.append(f'{count} {label}')
    return formats, ', '.join(parts)


def missing_files(paths):
    return [path for path in paths if not osp.isfile(path)]


def task_line(task, problems, notes):
    if problems:
        also = f' (and: {"; ".join(notes)})' if notes else ''
        return False, f'{task}: FAIL: {"; ".join(problems)}{also}'
    return True, f'{task}: ok: {"; ".join(notes)}'


def manifest_notes(folder, problems, notes):
    try:
        manifest = read_manifest(folder)
    except PreparationError as err:
        problems.append(str(err))
        return None
    if manifest is None:
        notes.append('no manifest.json (not written by the converters)')
        return None
    problems += changed_lists(folder, manifest)
    return manifest


def verify_vtab_task(root, task):
    _, num_classes, aliases = VTAB_TASKS[task]
    candidates = [osp.join(root, name) for name in (task, *aliases)]
    folder = next((c for c in candidates if osp.isdir(c)), None)
    if folder is None:
        return task_line(task, [f'no folder (looked for {", ".join(candidates)})'], [])
    expected = vtab_split_sizes(task)
    problems, notes, samples = [], [], {}
    for split in VTAB_SPLITS:
        try:
            samples[split] = read_list_file(osp.join(folder, f'{split}.txt'), num_classes)
        except (OSError, ValueError) as err:
            problems.append(str(err))
            continue
        if len(samples[split]) != expected[split]:
            problems.append(f'{split}.txt has {len(samples[split])} images, VPT\'s {split} has '
                            f'{expected[split]}')
    if all(split in samples for split in ('train800', 'val200', 'train800val200')):
        joined = [s[:2] for s in samples['train800'] + samples['val200']]
        if sorted(joined) != sorted(s[:2] for s in samples['train800val200']):
            problems.append('train800val200.txt is not train800.txt + val200.txt')
    if 'test' in samples:
        classes = len({label for _, label, _ in samples['test']})
        if classes != num_classes:
            problems.append(f'test.txt has {classes} of the {num_classes} classes')
        else:
            notes.append(f'{num_classes} classes')
    notes.insert(0, ' / '.join(f'{len(samples[s]) if s in samples else "-"}' for s in VTAB_SPLITS)
                 + ' images (train800 / val200 / train800val200 / test)')
    paths = sorted({osp.join(folder, path) for split in samples for path, _, _ in samples[split]})
    missing = missing_files(paths)
    if missing:
        problems.append(f'{len(missing)} listed images are missing, e.g. {missing[0]}')
    formats, described = describe_formats(p for p in paths if osp.isfile(p))
    if formats['empty'] or formats['other']:
        problems.append(f'images: {described}')
    elif formats['jpeg']:
        notes.append(f'images: {described} (JPEG is lossy: not the pixels tfds decodes, which '
                     f'VPT trained on)')
    else:
        notes.append(f'images: {described}')
    manifest = manifest_notes(folder, problems, notes)
    if manifest is not None:
        source = manifest.get('source', {})
        vpt = VTAB_SOURCES[task]
        note = f'{source.get("tfds_name")} {source.get("version")}'
        if source.get('version') != vpt.vpt_version:
            note += f' (VPT used {vpt.vpt_version}: {vpt.version_note})'
        notes.append(note)
    return task_line(task, problems, notes)


def verify_fgvc_task(root, task):
    num_classes, folders, image_root = FGVC_TASKS[task]
    candidates = [osp.join(root, name) for name in folders]
    folder = next((c for c in candidates if osp.isdir(c)), None)
    if folder is None:
        return task_line(task, [f'no folder (looked for {", ".join(candidates)})'], [])
    vpt_sizes = FGVC_SOURCES[task].vpt_sizes
    problems, notes, splits = [], [], {}
    for split in SPLITS:
        path = osp.join(folder, f'{split}.json')
        if not osp.isfile(path):
            problems.append(f'{path} is missing')
            continue
        try:
            splits[split] = read_split_file(path)
        except PreparationError as err:
            problems.append(str(err))
            continue
        if len(splits[split]) != vpt_sizes[split]:
            problems.append(f'{split}.json has {len(splits[split])} images, VPT\'s {split} has '
                            f'{vpt_sizes[split]}')
    notes.append(' / '.join(str(len(splits[s])) if s in splits else '-' for s in SPLITS)
                 + ' images (train / val / test)')
    for first, second in (('train', 'val'), ('train', 'test'), ('val', 'test')):
        if first in splits and second in splits:
            shared = splits[first].keys() & splits[second].keys()
            if shared:
                problems.append(f'{len(shared)} images are in both {first} and {second}, e.g. '
                                f'{sorted(shared)[0]}')
    short = [f'{split}.json has {len(set(splits[split].values()))} of the {num_classes} classes'
             for split in ('train', 'test')
             if split in splits and len(set(splits[split].values())) != num_classes]
    problems += short
    if not short:
        notes.append(f'{num_classes} classes')
    paths = sorted({osp.join(folder, image_root, key) for s in splits.values() for key in s})
    missing = missing_files(paths)
    if missing:
        problems.append(f'{len(missing)} listed images are missing, e.g. {missing[0]}')
    formats, described = describe_formats(p for p in paths if osp.isfile(p))
    (problems if formats['empty'] or formats['other'] else notes).append(f'images: {described}')
    manifest = manifest_notes(folder, problems, notes)
    if manifest is not None:
        notes.append(f'{manifest.get("split", {}).get("origin")} split')
    return task_line(task, problems, notes)


def verify_vtab(root, tasks):
    """(all ok, one line per task)."""
    results = [verify_vtab_task(root, task) for task in tasks]
    return all(ok for ok, _ in results), [line for _, line in results]


def verify_fgvc(root, tasks):
    """(all ok, one line per task)."""
    results = [verify_fgvc_task(root, task) for task in tasks]
    return all(ok for ok, _ in results), [line for _, line in results]
