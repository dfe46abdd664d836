"""Small generated data in the real on-disk formats, for tests and the demo (no downloads)."""
from .synthetic import make_ade20k, make_fgvc_task, make_vtab_task, synthetic_image
from .weights import write_random_vit

__all__ = ['make_ade20k', 'make_fgvc_task', 'make_vtab_task', 'synthetic_image',
           'write_random_vit']
