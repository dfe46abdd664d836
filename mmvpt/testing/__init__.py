"""Small generated data in the real on-disk formats, for tests and the demo (no downloads)."""
from .synthetic import make_ade20k, make_fgvc_task, make_vtab_task, synthetic_image

__all__ = ['make_ade20k', 'make_fgvc_task', 'make_vtab_task', 'synthetic_image']
