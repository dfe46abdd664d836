# Adapter+ on FGVC dogs (120 classes).
# width 1, random-resized crops: the authors' (visinf/adapter_plus fgvc/adapter_plus_dim1-32.yaml).
_base_ = ['../_base_/methods/adapter_plus.py', '../_base_/datasets/fgvc.py']

task = 'dogs'
model = dict(backbone=dict(prompt=dict(bottleneck=1)), head=dict(num_classes=120))
data_preprocessor = dict(num_classes=120, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])
train_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.fgvc_train_crops}}))
val_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.fgvc_test_crops}}))
test_dataloader = dict(dataset=dict(task=task, pipeline={{_base_.fgvc_test_crops}}))
