"""Training hooks and the CPU mixed-precision optimizer wrapper."""
from .hooks import *  # noqa: F401,F403
from .optim_wrappers import BF16AmpOptimWrapper  # noqa: F401
