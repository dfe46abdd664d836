"""mmvpt models: prompted backbones, prompt-tuning methods and the adapter-style baselines."""
from .adapters import SSF, Adapter, AdaptFormer, BitFit, LoRA
from .backbones import PromptedSwin, PromptedViT
from .prompts import CVPT, E2VPT, IVPT, VPT, PromptMethod

__all__ = ['PromptedSwin', 'PromptedViT', 'PromptMethod', 'VPT', 'E2VPT', 'CVPT', 'IVPT',
           'LoRA', 'AdaptFormer', 'Adapter', 'SSF', 'BitFit']
