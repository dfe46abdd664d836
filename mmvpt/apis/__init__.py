from mmvpt.utils.launch import (
    SUPPORTED_HOSTS,
    ConfigError,
    adapt_to_device,
    add_training_hooks,
    check_mmvpt_types,
    enable_amp,
    finish_distributed,
    host_of,
    init_distributed,
    prepare_config,
)

from .checkpoints import merge_checkpoint
from .inference import infer_images, load_model
from .multitask import MultiTaskModel
from .multitask_eval import evaluate_tasks

# The config helpers live in mmvpt.utils.launch; they stay importable from here.
__all__ = ['SUPPORTED_HOSTS', 'ConfigError', 'adapt_to_device', 'add_training_hooks',
           'check_mmvpt_types', 'enable_amp', 'finish_distributed', 'host_of',
           'init_distributed', 'prepare_config', 'MultiTaskModel', 'infer_images', 'load_model',
           'merge_checkpoint', 'evaluate_tasks']
