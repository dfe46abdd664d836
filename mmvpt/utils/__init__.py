from .checkpoint_loading import load_local_checkpoint, register_checkpoint_loader
from .param_report import format_parameter_report, parameter_report

__all__ = ['load_local_checkpoint', 'register_checkpoint_loader', 'parameter_report',
           'format_parameter_report']
