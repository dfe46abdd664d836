"""mmvpt: visual prompt tuning for mmpretrain and mmsegmentation.

Importing mmvpt registers its models and hooks (scope ``mmvpt``), makes MMEngine write local
checkpoints atomically and lets torch's weights-only loading read MMEngine checkpoints; it
never imports mmpretrain or mmseg, whose parts are imported only when a config uses them.
"""
from . import engine, models  # noqa: F401  (registers mmvpt.X types)
from .registry import DATASETS, HOOKS, MODELS, OPTIM_WRAPPERS, TRANSFORMS
from .utils.atomic_io import use_atomic_local_backend
from .utils.checkpoint_loading import allow_mmengine_checkpoint_types
from .version import __version__

# Checkpoints written whole or not at all, and read by torch's weights-only loader.
use_atomic_local_backend()
allow_mmengine_checkpoint_types()

__all__ = ['DATASETS', 'HOOKS', 'MODELS', 'OPTIM_WRAPPERS', 'TRANSFORMS', '__version__']
