"""The prompt-tuning methods, one module each; every registered method here is exported."""
from ..methods import import_modules
from .base import PromptMethod, display_name

_METHODS = import_modules(__import__(__name__, fromlist=['_']))
globals().update(_METHODS)
__all__ = ['PromptMethod', 'display_name', *_METHODS]
