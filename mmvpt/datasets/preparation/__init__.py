"""Building the benchmark folders that :class:`mmvpt.VTAB1k` and :class:`mmvpt.FGVC` read
from the original sources, and checking existing ones.

``tools/dataset_converters/{vtab1k,fgvc}.py`` are the command lines over this package. The
split definitions (which source split and slice each VTAB-1k split comes from, how the
structured tasks' labels are derived, the FGVC validation sizes) are tables here, so that
tests check them with small numbers and the manifests and the README quote one source.

VTAB-1k reads tensorflow-datasets, an optional extra (``requirements/extras/data.txt``),
imported only when a conversion starts; nothing under :mod:`mmvpt.datasets` imports this
package.
"""
from .common import PreparationError, read_manifest
from .fgvc import FGVC_SOURCES, convert_fgvc
from .verify import verify_fgvc, verify_vtab
from .vtab import VTAB_SOURCES, Slice, convert_vtab, vtab_split_sizes

__all__ = ['FGVC_SOURCES', 'PreparationError', 'Slice', 'VTAB_SOURCES', 'convert_fgvc',
           'convert_vtab', 'read_manifest', 'verify_fgvc', 'verify_vtab', 'vtab_split_sizes']
