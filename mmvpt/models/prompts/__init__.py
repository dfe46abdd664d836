from .base import PromptMethod, display_name
from .cvpt import CVPT
from .e2vpt import E2VPT
from .ivpt import IVPT
from .vpt import VPT

__all__ = ['PromptMethod', 'display_name', 'VPT', 'E2VPT', 'CVPT', 'IVPT']
