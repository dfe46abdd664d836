# VPT's recipe: SGD momentum 0.9, 10 warm-up epochs then cosine, 100 epochs; the head's
# bias gets no weight decay. lr / wd are per task (see the method configs).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.625, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'head.fc.bias': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=10, end=100, eta_min=0.,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=10)
val_cfg = dict()
test_cfg = dict()
