from .base import PromptMethod
from .cvpt import CVPT
from .e2vpt import E2VPT
from .ivpt import IVPT
from .vpt import VPT

__all__ = ['PromptMethod', 'VPT', 'E2VPT', 'CVPT', 'IVPT']
