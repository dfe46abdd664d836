"""Datasets. They build on mmpretrain, imported only when a config names them
(the DATASETS registry imports this package on first use)."""
from .fgvc import FGVC, FGVC_TASKS
from .sample_source import SampleSourceMixin, json_key_source, line_source
from .vtab import VTAB_SPLITS, VTAB_TASKS, ListFileDataset, VTAB1k, canonical_vtab_task

__all__ = ['FGVC', 'FGVC_TASKS', 'ListFileDataset', 'SampleSourceMixin', 'VTAB1k', 'VTAB_SPLITS',
           'VTAB_TASKS', 'canonical_vtab_task', 'json_key_source', 'line_source']
