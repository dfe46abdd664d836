# LoRA (Hu et al. 2022): rank 8 on the query and value rows of every block's qkv, scale
# alpha / r = 1, the setting of the VTAB-1k tables.
# Recipe: NOAH's VTAB-1k LoRA baseline (ZhangYuanhan-AI/NOAH,
# configs/LoRA/VTAB/slurm_train_lora_vtab.sh and supernet_train_prompt.py's defaults): AdamW,
# lr 1e-3, wd 1e-4, batch 64, 100 epochs with 10 warm-up, drop-path 0.1, rank 8, the same for
# every task; the base schedule's warm-up from 1e-6 and cosine to 1e-5 are NOAH's too. No
# source gives an FGVC recipe: the same values are our default there.
# tools/protocol.py searches lr x wd: pass --lrs with AdamW-sized rates (its default grid is
# VPT's, for SGD).
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.LoRA', rank=8, alpha=8, targets=('q', 'v'))))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
