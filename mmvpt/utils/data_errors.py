"""Bad data named by where it comes from: the error, the file checks and the data-info key
that mmvpt's datasets (when a list loads) and ``mmvpt.DataCheckHook`` (before training)
share."""
import os
import stat

# Data-info key of a sample's origin, set by mmvpt's datasets: "list/file.txt:LINE" or
# 'split.json, key "relative/path"'.
SAMPLE_SOURCE_KEY = 'sample_source'
# Problems named one by one in an error message; the rest are counted.
MAX_NAMED = 10


class DataError(ValueError):
    """Bad data, named with where it comes from (list file and line, JSON file and key,
    dataset folder or config key) and its path."""


def file_problem(path):
    """Why ``path`` cannot be a sample file (``'does not exist'``, ``'is empty (0 bytes)'``,
    ...), or ``None`` when it can; one ``os.stat``. Remote URIs are not checked."""
    if '://' in str(path):
        return None
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return 'does not exist'
    except OSError as error:
        return f'cannot be read ({error.strerror or error})'
    if not stat.S_ISREG(status.st_mode):
        return 'is not a file'
    if status.st_size == 0:
        return 'is empty (0 bytes)'
    return None


def sample_file_problems(info, where):
    """Messages for the image (``img_path``) and annotation (``seg_map_path``) of one data
    info that cannot be read, each starting with ``where``."""
    problems = []
    image = info.get('img_path')
    if image is not None:
        problem = file_problem(image)
        if problem:
            problems.append(f'{where}: image {image} {problem}')
    annotation = info.get('seg_map_path')
    if annotation is not None:
        problem = file_problem(annotation)
        if problem:
            problems.append(f'{where}: image {image} has no annotation ({annotation} {problem})')
    return problems


def raise_data_error(headline, problems):
    """Raises :class:`DataError` with ``headline`` and the problems, the first
    ``MAX_NAMED`` named one per line; does nothing without problems."""
    if not problems:
        return
    lines = [headline] + [f'  {problem}' for problem in problems[:MAX_NAMED]]
    if len(problems) > MAX_NAMED:
        lines.append(f'  ... and {len(problems) - MAX_NAMED} more')
    raise DataError('\n'.join(lines))
