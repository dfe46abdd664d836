"""mmvpt models: prompted backbones, prompt-tuning methods and the adapter-style baselines
(every registered method is exported: :mod:`mmvpt.models.methods`)."""
from . import adapters, prompts
from .adapters import *  # noqa: F401,F403
from .backbones import PromptedSwin, PromptedViT
from .prompts import *  # noqa: F401,F403
from .prompts import PromptMethod

__all__ = ['PromptedSwin', 'PromptedViT', 'PromptMethod',
           *(name for name in prompts.__all__ if name not in ('PromptMethod', 'display_name')),
           *(name for name in adapters.__all__ if name != 'AdapterMethod')]
