"""Mixed precision in bfloat16: what ``tools/train.py --amp`` uses on a machine without GPU.

MMEngine's ``AmpOptimWrapper`` cannot serve there: its constructor asserts a CUDA, NPU, MLU
or MUSA device, although the ``autocast`` it enters supports CPU (in bfloat16 only).
"""
from contextlib import contextmanager

import torch
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.runner.amp import autocast

from mmvpt.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class BF16AmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward (``optim_context``) runs under bfloat16 autocast on the
    device the run uses (CPU without a GPU).

    There is no loss scaling: bfloat16 has float32's exponent range, so gradients do not
    underflow, and no ``GradScaler`` is made (torch.cuda.amp's would only disable itself
    on CPU, with a warning). Parameters, buffers, gradients and the optimizer state stay
    float32; autocast runs the matrix products (linear, matmul, attention, convolution) in
    bfloat16. Arguments are ``OptimWrapper``'s.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        print_log('mixed precision: bfloat16 autocast, no loss scaling (mmvpt.BF16AmpOptimWrapper)',
                  logger='current')

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), autocast(dtype=torch.bfloat16):
            yield
