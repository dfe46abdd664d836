from .prompted_swin import PromptedSwin
from .prompted_vit import PromptedViT

__all__ = ['PromptedSwin', 'PromptedViT']
