"""Each paper's evaluation protocol, as its method declares it, planned and run as independent,
resumable jobs by ``tools/protocol.py``.

- :mod:`.declaration`: what a config's method (or the config itself) declares, resolved into
  stages for the config's benchmark, with the command line's overrides;
- :mod:`.stages`: what each kind of stage runs (search, E²VPT's pruning with rewinding,
  final seeds) and how it chooses;
- :mod:`.commands`: a run as a command of a launcher (local, torchrun, Slurm, Slurm arrays);
- :mod:`.runner`: the work dir, the plan, and running a config's stages in order.

The form of a declaration is in :mod:`mmvpt.models.utils.protocols`; what the runs leave and
the summaries are in :mod:`mmvpt.utils.protocol_results`.
"""
from .declaration import BENCHMARKS, Overrides, describe_config, resolve_protocol
from .runner import Launch, plan_configs, run_protocol

__all__ = ['BENCHMARKS', 'Overrides', 'describe_config', 'resolve_protocol', 'Launch',
           'plan_configs', 'run_protocol']
