from .adapter import Adapter
from .adaptformer import AdaptFormer
from .base import AdapterMethod
from .bitfit import BitFit
from .lora import LoRA
from .ssf import SSF

__all__ = ['AdapterMethod', 'LoRA', 'AdaptFormer', 'Adapter', 'SSF', 'BitFit']
