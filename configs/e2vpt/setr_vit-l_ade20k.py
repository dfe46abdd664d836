# E2VPT's visual + key-value prompts on SETR (the paper reports no segmentation; 10 visual /
# 5 key-value prompts and no pruning are our defaults; add mmvpt.PromptPruningHook with
# by_epoch=False to prune).
_base_ = ['../_base_/setr_vit-l_ade20k.py']

model = dict(backbone=dict(prompt=dict(type='mmvpt.E2VPT', num_tokens=10, num_kv_tokens=5,
                                       dropout=0.1)))
