# Full fine-tuning: nothing frozen, no prompts; checkpoints are full (everything is tuned).
# VPT's recipe (KMnP/vpt configs/base-finetune.yaml): AdamW, 5 warm-up epochs then cosine,
# 100 epochs; lr 1e-3 x batch / 256 and wd 1e-4 are our defaults, tools/protocol.py searches
# VPT's fine-tuning grid.
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=None, frozen=False))
optim_wrapper = dict(optimizer=dict(lr=2.5e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=100, eta_min=0.,
         convert_to_iter_based=True),
]
custom_hooks = [dict(type='mmvpt.ParameterReportHook')]
# tools/protocol.py: VPT's fine-tuning grid (KMnP/vpt tune_vtab.py get_lrwd_range('finetune'),
# tune_fgvc.py finetune_main), scaled by batch / 256 as for every VPT grid, then 5 seeds.
_vpt_search = dict(type='search', space=dict(lr=(0.005, 0.001, 0.0005, 0.0001),
                                              wd=(0.01, 1e-3, 1e-4, 0.)),
                   scale_lr=True, score='last', prefer=('lr', ))
_vpt_final = dict(type='final', seeds=(42, 44, 82, 100, 800))
protocol = dict(
    name="VPT's fine-tuning grid", optimizer='AdamW',
    source='VPT (Jia et al. 2022); KMnP/vpt tune_vtab.py, tune_fgvc.py, base-finetune.yaml',
    vtab=[_vpt_search, _vpt_final], fgvc=[dict(_vpt_search, score='best'), _vpt_final])
