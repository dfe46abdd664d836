# Adapter+ (Steitz and Roth, CVPR 2024): one bottleneck adapter per block on the block's output
# (after the MLP's residual sum: the paper's Post-Adapter), y + s * up(GELU(down(y))), width 8,
# s a learned per-channel scale (ones at the start), both projections truncated normal (std
# 0.01, cut at 2 std; Houlsby's init), zero biases, no norm inside, drop-path 0.1 on the
# adapter's output.
# Recipe: the authors' code (visinf/adapter_plus: conf/config.yaml, conf/adapter/
# {base_adapter,adapter_plus}.yaml, conf/train/default.yaml, conf/train/optimizer/adamw.yaml,
# conf/data/{base_data,vtab,fgvc}.yaml, conf/experiment/vtab/adapter_plus_dim8.yaml,
# conf/experiment/fgvc/adapter_plus_dim1-32.yaml, modeling/adaptermodel.py, data/*.py):
# ViT-B/16 ImageNet-21k, drop-path 0.1 on the blocks, AdamW lr 1e-3, wd 1e-4 on weights only
# (none on biases, the scales or any 1-d tensor), batch 64, 100 epochs, linear warm-up from
# lr / 100 over 10 epochs then cosine to lr / 1000, stepped per epoch, no label smoothing, no
# gradient clipping; VTAB-1k: resized to 224, no augmentation, the last incomplete batch
# dropped, width 8 on every task (their 77.6 row); FGVC: the width per task of their config,
# random-resized crops and flips (the pipelines below); three seeds (18, 45, 25).
# The generated configs normalise as theirs, with the checkpoint's 0.5 / 0.5 (the dataset bases:
# ImageNet's mean / std). Ours, where we differ: VTAB-1k images are resized bicubic (theirs: TF
# bilinear); their Lightning loop sets each epoch's rate one epoch late (epochs 0 and 1 both at lr /
# 100), ours follows the schedule as written; they train in bfloat16 autocast (tools/train.py --amp
# here); the head starts from mmpretrain's init (theirs: timm's). FGVC: they train on train + val
# and test on test, as the FGVC base's default split does.
_base_ = ['../models/vit-b16.py', '../schedules/adamw_100e.py', '../default_runtime.py']

model = dict(backbone=dict(
    drop_path_rate=0.1,
    prompt=dict(type='mmvpt.AdapterPlus', bottleneck=8, position='post', scaling='channel',
                init='houlsby', norm=False, drop_path=0.1)))
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=1e-4),
    # their add_weight_decay: no decay on biases (the head's too), the scales, 1-d tensors
    paramwise_cfg=dict(custom_keys={'bias': dict(decay_mult=0.), '_scale': dict(decay_mult=0.),
                                    '_norm_': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=10),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=10, end=100, eta_min_ratio=1e-3),
]
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]

# The generated FGVC configs' pipelines (their data/fgvc.py): timm's random-resized crop (scale
# 0.08-1, ratio 3/4-4/3; theirs picks bilinear or bicubic at random) and flip; test: the short
# side to 256, center crop 224.
fgvc_train_crops = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=(224, 224), crop_ratio_range=(0.08, 1.0),
         aspect_ratio_range=(3. / 4., 4. / 3.), backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
fgvc_test_crops = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
