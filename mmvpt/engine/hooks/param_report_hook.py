from mmengine.hooks import Hook

from mmvpt.registry import HOOKS
from mmvpt.utils.param_report import format_parameter_report, parameter_report


@HOOKS.register_module()
class ParameterReportHook(Hook):
    """Logs the trainable-parameter report when training starts and keeps it in the
    message hub (``runtime_info`` key ``param_report``)."""
    priority = 'VERY_LOW'

    def before_train(self, runner):
        report = parameter_report(runner.model)
        runner.message_hub.update_info('param_report', report)
        runner.logger.info(format_parameter_report(report))
