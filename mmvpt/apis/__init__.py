from .launch import (SUPPORTED_HOSTS, ConfigError, adapt_to_device, add_training_hooks,
                     check_mmvpt_types, enable_amp, finish_distributed, host_of,
                     init_distributed, prepare_config)
from .multitask import MultiTaskModel

__all__ = ['SUPPORTED_HOSTS', 'ConfigError', 'adapt_to_device', 'add_training_hooks',
           'check_mmvpt_types', 'enable_amp', 'finish_distributed', 'host_of',
           'init_distributed', 'prepare_config', 'MultiTaskModel']
