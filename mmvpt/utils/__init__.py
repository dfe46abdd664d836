from .checkpoint_loading import load_local_checkpoint, register_checkpoint_loader
from .launch import (
    SUPPORTED_HOSTS,
    USER_ERRORS,
    ConfigError,
    adapt_to_device,
    add_frozen_init_hook,
    add_test_output,
    add_training_hooks,
    apply_tta,
    check_mmvpt_types,
    drop_method_hooks,
    enable_amp,
    finish_distributed,
    host_of,
    init_distributed,
    prepare_config,
    run_cli,
)
from .param_report import format_parameter_report, parameter_report

__all__ = ['load_local_checkpoint', 'register_checkpoint_loader', 'parameter_report',
           'format_parameter_report', 'SUPPORTED_HOSTS', 'ConfigError', 'adapt_to_device',
           'add_frozen_init_hook', 'add_test_output', 'add_training_hooks', 'apply_tta',
           'check_mmvpt_types', 'drop_method_hooks', 'enable_amp', 'finish_distributed', 'host_of',
           'init_distributed', 'prepare_config', 'run_cli', 'USER_ERRORS']
