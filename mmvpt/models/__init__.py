"""mmvpt models: prompted backbones and prompt-tuning methods."""
from .backbones import PromptedSwin, PromptedViT
from .prompts import CVPT, E2VPT, IVPT, VPT, PromptMethod

__all__ = ['PromptedSwin', 'PromptedViT', 'PromptMethod', 'VPT', 'E2VPT', 'CVPT', 'IVPT']
