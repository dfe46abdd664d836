# SETR-PUP on ADE20K (mmseg's config: 512x512 crops, three auxiliary heads on out indices
# 0..2, SGD lr 1e-3 with the heads at 10x, wd 0, poly, 160k iterations, 2 images x 8 GPUs,
# slide test) with a frozen, prompted ViT-L/16 from timm's jx_vit_large_p16_384 weights, the
# position embedding resized from 384 to 512 when loading. Without a prompt this is the
# "frozen backbone, SETR head only" baseline. SyncBN turns into BN on CPU by itself
# (tools/train.py, tools/test.py).
_base_ = ['mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py']

default_scope = 'mmseg'
custom_imports = dict(imports=['mmvpt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvpt.PromptedViT',
        arch='vit_large_patch16_384',
        img_size=512,
        out_type='featmap',
        out_indices=(9, 14, 19, 23),
        final_norm=False,  # as mmseg's SETR backbone
        interpolate_mode='bilinear',
        frozen=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='pretrained/jx_vit_large_p16_384-b3be5167.pth')))
# Atomic checkpoints with every rank's random state (exact --resume; mmseg's interval stays);
# images without annotations (or the reverse) and too few classes named before training.
default_hooks = dict(checkpoint=dict(type='mmvpt.CheckpointHook'),
                     data_check=dict(type='mmvpt.DataCheckHook'))
# The heads' lr x10 matches parameter names containing 'head' (decode_head, auxiliary_head);
# no prompt parameter has 'head' in its name (tests/test_configs/test_segmentation.py checks).
custom_hooks = [dict(type='mmvpt.ParameterReportHook'), dict(type='mmvpt.TunedCheckpointHook')]
