"""mmvpt models: prompted backbones and prompt-tuning methods."""
from .backbones import PromptedViT
from .prompts import CVPT, E2VPT, IVPT, VPT, PromptMethod

__all__ = ['PromptedViT', 'PromptMethod', 'VPT', 'E2VPT', 'CVPT', 'IVPT']
