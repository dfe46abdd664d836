"""Where each sample of a list-file or JSON dataset comes from, so that bad data is named by
its list file and line (or JSON file and key) and its path, and found as early as it can be:
missing or empty images when the list loads, images that fail to decode when the sample is
loaded (also in a DataLoader worker, whose traceback text PyTorch re-raises in the main
process)."""
import json

from mmvpt.utils.data_errors import (
    SAMPLE_SOURCE_KEY,
    DataError,
    raise_data_error,
    sample_file_problems,
)


def line_source(path, line_number):
    """The source of a sample read from line ``line_number`` of list file ``path``."""
    return f'{path}:{line_number}'


def json_key_source(path, key):
    """The source of a sample read from key ``key`` of JSON file ``path``."""
    return f'{path}, key {json.dumps(key)}'


class SampleSourceMixin:
    """For mmengine datasets whose ``load_data_list`` puts each sample's source (see
    :func:`line_source`, :func:`json_key_source`) under ``SAMPLE_SOURCE_KEY``:

    - after loading, every listed image is stat'ed once; missing or empty ones fail with
      :class:`DataError` naming source and path, so training never starts on them;
    - a sample whose loading fails (e.g. an undecodable image) re-raises as
      :class:`DataError` with its source and path, the original error chained.

    Put it before the dataset base class: ``class MyDataset(SampleSourceMixin, BaseDataset)``.
    """

    def filter_data(self):
        # filter_data is the step between loading the list and serializing it.
        data_list = super().filter_data()
        problems = [problem for info in data_list
                    for problem in sample_file_problems(info, info[SAMPLE_SOURCE_KEY])]
        raise_data_error(
            f'{type(self).__name__}: {len(problems)} of the {len(data_list)} listed samples '
            'cannot be read:', problems)
        return data_list

    def prepare_data(self, idx):
        try:
            return super().prepare_data(idx)
        except Exception as error:
            info = self.get_data_info(idx)
            raise DataError(f'{info[SAMPLE_SOURCE_KEY]}: sample {info.get("img_path")} failed to '
                            f'load: {type(error).__name__}: {error}') from error
