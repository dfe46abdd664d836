"""mmvpt: visual prompt tuning for mmpretrain and mmsegmentation.

Importing mmvpt registers its models and hooks (scope ``mmvpt``); it never imports
mmpretrain or mmseg, whose parts are imported only when a config uses them.
"""
from . import engine, models  # noqa: F401  (registers mmvpt.X types)
from .registry import DATASETS, HOOKS, MODELS, TRANSFORMS
from .version import __version__

__all__ = ['DATASETS', 'HOOKS', 'MODELS', 'TRANSFORMS', '__version__']
