"""Small generated data in the real on-disk formats, for tests, the demo and the benchmark
(no downloads)."""
from .synthetic import make_ade20k, make_fgvc_task, make_vtab_task, synthetic_image
from .tasks import write_random_tasks
from .weights import write_random_vit

__all__ = ['make_ade20k', 'make_fgvc_task', 'make_vtab_task', 'synthetic_image',
           'write_random_tasks', 'write_random_vit']
