from .prompted_vit import PromptedViT

__all__ = ['PromptedViT']
