from mmvpt.utils.data_errors import DataError

from .checkpoint_hook import CheckpointHook
from .data_check_hook import DataCheckHook
from .frozen_init_hook import CrossAttentionInitHook, FrozenInitHook
from .merge_method_hook import MergeMethodHook
from .param_report_hook import ParameterReportHook
from .prompt_mask_hook import PromptMaskHook
from .prompt_pruning_hook import PromptPruningHook
from .tuned_checkpoint_hook import TunedCheckpointHook, tuned_state_keys

__all__ = ['CheckpointHook', 'CrossAttentionInitHook', 'DataCheckHook', 'DataError',
           'FrozenInitHook', 'MergeMethodHook', 'ParameterReportHook', 'PromptMaskHook',
           'PromptPruningHook', 'TunedCheckpointHook', 'tuned_state_keys']
