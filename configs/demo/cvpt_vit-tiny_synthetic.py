# The demo's second stage: CVPT on the frozen tiny ViT that the first stage trained
# (tools/demo.py passes its checkpoint as init_cfg), on a related task.
_base_ = ['./vit-tiny_synthetic.py']

pretrained = 'work_dirs/demo/pretrain/epoch_16.pth'
model = dict(
    backbone=dict(
        prompt=dict(type='mmvpt.CVPT', num_tokens=8),
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
optim_wrapper = dict(optimizer=dict(lr=1e-2))
train_cfg = dict(max_epochs=10, val_interval=5)
default_hooks = dict(checkpoint=dict(interval=5))
# Checkpoints hold the prompts and the head only; tools/test.py puts them back on the
# pretrained backbone named in init_cfg.
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
