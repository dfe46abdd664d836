from .param_report_hook import ParameterReportHook

__all__ = ['ParameterReportHook']
