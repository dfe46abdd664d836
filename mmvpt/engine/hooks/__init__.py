from mmvpt.utils.data_errors import DataError
from .checkpoint_hook import CheckpointHook
from .cross_attention_init_hook import CrossAttentionInitHook
from .data_check_hook import DataCheckHook
from .merge_method_hook import MergeMethodHook
from .param_report_hook import ParameterReportHook
from .prompt_mask_hook import PromptMaskHook
from .prompt_pruning_hook import PromptPruningHook
from .tuned_checkpoint_hook import TunedCheckpointHook, tuned_state_keys

__all__ = ['CheckpointHook', 'CrossAttentionInitHook', 'DataCheckHook', 'DataError',
           'MergeMethodHook', 'ParameterReportHook', 'PromptMaskHook', 'PromptPruningHook',
           'TunedCheckpointHook', 'tuned_state_keys']
