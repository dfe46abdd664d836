from .launch import (SUPPORTED_HOSTS, ConfigError, adapt_to_device, check_mmvpt_types,
                     host_of, init_distributed, prepare_config)

__all__ = ['SUPPORTED_HOSTS', 'ConfigError', 'adapt_to_device', 'check_mmvpt_types',
           'host_of', 'init_distributed', 'prepare_config']
