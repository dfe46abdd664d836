from .cross_attention_init_hook import CrossAttentionInitHook
from .param_report_hook import ParameterReportHook
from .prompt_pruning_hook import PromptPruningHook
from .tuned_checkpoint_hook import TunedCheckpointHook, tuned_state_keys

__all__ = ['CrossAttentionInitHook', 'ParameterReportHook', 'PromptPruningHook',
           'TunedCheckpointHook', 'tuned_state_keys']
