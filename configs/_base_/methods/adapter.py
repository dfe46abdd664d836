# Adapter (Houlsby et al. 2019): sequential bottleneck adapters (width 8) after the
# attention and the MLP of every block.
# Recipe: NOAH's VTAB-1k Adapter baseline (ZhangYuanhan-AI/NOAH,
# configs/Adapter/VTAB/slurm_train_adapter_vtab.sh and supernet_train_prompt.py's defaults):
# AdamW, lr 1e-3, wd 1e-4, batch 64, 100 epochs with 10 warm-up, drop-path 0.1, width 8, the
# same for every task; the base schedule's warm-up from 1e-6 and cosine to 1e-5 are NOAH's
# too. No source gives an FGVC recipe: the same values are our default there.
# tools/protocol.py searches lr x wd: pass --lrs with AdamW-sized rates (its default grid is
# VPT's, for SGD).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.Adapter', bottleneck=8, placement=('attn', 'mlp'))))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
