"""Small generated data in the real on-disk formats, for tests and the demo (no downloads)."""
from .synthetic import make_vtab_task, synthetic_image

__all__ = ['make_vtab_task', 'synthetic_image']
