_base_ = ['mmpretrain::_base_/default_runtime.py']

default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvpt'], allow_failed_imports=False)

# mmvpt.CheckpointHook: MMEngine's, written atomically, with every rank's random state;
# mmvpt.DataCheckHook: missing images and too few classes named before training.
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    data_check=dict(type='mmvpt.DataCheckHook'),
    checkpoint=dict(type='mmvpt.CheckpointHook', interval=10, max_keep_ckpts=1, save_last=True))
# Checkpoints hold what was tuned only; tools/test.py and --resume put it back on the
# pretrained backbone of model.backbone.init_cfg.
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
