"""The adapter-style baselines, one module each; every registered method here is exported."""
from ..methods import import_modules
from .base import AdapterMethod

_METHODS = import_modules(__import__(__name__, fromlist=['_']))
globals().update(_METHODS)
__all__ = ['AdapterMethod', *_METHODS]
