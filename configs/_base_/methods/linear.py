# Linear probing: the frozen backbone without prompts, only the head trains (VPT's recipe;
# base lr 2.5 and wd 1e-4 are our defaults, tools/protocol.py searches VPT's grid).
_base_ = ['../models/vit-b16.py', '../schedules/sgd_100e.py', '../default_runtime.py']

model = dict(backbone=dict(prompt=None, frozen=True))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
# tools/protocol.py: VPT's linear grid (KMnP/vpt tune_vtab.py get_lrwd_range('linear'),
# tune_fgvc.py linear_main: the same 10 base lrs on both), then 5 seeds. See
# mmvpt/models/utils/protocols.py for the form.
_vpt_search = dict(
    type='search', space=dict(lr=(50., 25., 10., 5., 2.5, 1., 0.5, 0.25, 0.1, 0.05),
                              wd=(0.01, 1e-3, 1e-4, 0.)),
    scale_lr=True, score='last', prefer=('lr', ))
_vpt_final = dict(type='final', seeds=(42, 44, 82, 100, 800))
protocol = dict(
    name="VPT's linear-probing grid", optimizer='SGD',
    source='VPT (Jia et al. 2022); KMnP/vpt tune_vtab.py, tune_fgvc.py',
    vtab=[_vpt_search, _vpt_final], fgvc=[dict(_vpt_search, score='best'), _vpt_final])
