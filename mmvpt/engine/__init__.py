"""Training hooks."""
from .hooks import ParameterReportHook

__all__ = ['ParameterReportHook']
