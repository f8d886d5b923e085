# The embedded default's CPU schedule: AdamW, a 20-iteration warmup, then linear decay to 1%.
# lr 1e-2 trains the model from random weights: the pretrain stage stretches this schedule to
# pretrain.iterations; fine-tuning trials keep its length at train.lr (docs/study.md, "Protocol").
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-2, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=1.0, begin=20, end=160, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160, val_interval=80)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=80, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
