"""The cost of each prompt method on a timm ViT or Swin, next to linear probing and full
fine-tuning, measured as data: tuned parameters, train FLOPs, train-step time and memory
(:func:`measure_rows`, the rows' timed steps interleaved; :func:`timing_warnings` says when
the times are not to be trusted), where the time of a train step goes (:func:`profile_step`),
and the cost of serving several tasks on one backbone (:func:`measure_serving`).
``tools/analysis/benchmark.py`` prints them; its docstring says what every number means.

The model of a row is the backbone and a 100-class linear head (:class:`Classifier`). Rows
(:data:`METHODS`): ``none``, the P=0 reference (the frozen backbone without prompts whose
train step still back-propagates through every block), ``linear`` (linear probing),
``full`` (full fine-tuning), the prompt methods' rows (:data:`VARIANTS`) at each P > 0 and
the other methods' rows (:data:`ADAPTER_ROWS`, one each), as the methods declare them.

One module per concern, their public names re-exported here: :mod:`.rows` (what the rows
are and the model of each), :mod:`.timing` (one train step: FLOPs, time, memory; the rows
measured), :mod:`.profiling` (where a step's time goes), :mod:`.serving` (several tasks on
one backbone) and :mod:`.options` (the command line's options, checked, and their errors).
"""
from .options import (
    AMP_DTYPES,
    BenchmarkOptions,
    OptionError,
    check_options,
    describe_setting,
    parse_profile_spec,
)
from .profiling import ATTENTION_KERNELS, PROFILE_TOP, profile_step
from .rows import (
    ADAPTER_ROWS,
    BASELINES,
    FULL,
    LINEAR,
    METHODS,
    NUM_CLASSES,
    REFERENCE,
    ROWS,
    UNPROMPTED,
    VARIANTS,
    Classifier,
    backbone_class,
    build,
    default_img_size,
    method_name,
    method_row,
    prompt_config,
    row_keys,
)
from .serving import (
    MULTI,
    MULTITASK_CLASSES,
    SEPARATE,
    SINGLE,
    held_bytes,
    measure_serving,
    single_task_model,
    time_serving,
)
from .timing import (
    CPU_SDPA_FLOPS,
    LOAD_LIMIT,
    SPREAD_LIMIT,
    autocast,
    autocast_supported,
    compiled,
    grad_scaler,
    machine_load,
    measure,
    measure_rows,
    memory_budget,
    prepare,
    resident_bytes,
    row_label,
    saved_activation_bytes,
    synchronize,
    time_steps,
    timing_warnings,
    train_step,
    tuned_parameters,
)

__all__ = [
    'ADAPTER_ROWS', 'AMP_DTYPES', 'ATTENTION_KERNELS', 'BASELINES', 'CPU_SDPA_FLOPS', 'FULL',
    'LINEAR', 'LOAD_LIMIT', 'METHODS', 'MULTI', 'MULTITASK_CLASSES', 'NUM_CLASSES',
    'PROFILE_TOP', 'REFERENCE', 'ROWS', 'SEPARATE', 'SINGLE', 'SPREAD_LIMIT', 'UNPROMPTED',
    'VARIANTS', 'BenchmarkOptions', 'Classifier', 'OptionError', 'autocast',
    'autocast_supported', 'backbone_class', 'build', 'check_options', 'compiled',
    'default_img_size', 'describe_setting', 'grad_scaler', 'held_bytes', 'machine_load',
    'measure', 'measure_rows', 'measure_serving', 'memory_budget', 'method_name', 'method_row',
    'parse_profile_spec', 'prepare', 'profile_step', 'prompt_config', 'resident_bytes',
    'row_keys', 'row_label', 'saved_activation_bytes', 'single_task_model', 'synchronize',
    'time_serving', 'time_steps', 'timing_warnings', 'train_step', 'tuned_parameters',
]
