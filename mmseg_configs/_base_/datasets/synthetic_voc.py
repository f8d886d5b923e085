# The generated VOC-aug dataset (dvc stage data@synthetic_voc): 21 classes, 128x128,
# laid out as mmseg's pascal_voc12_aug.py reads VOC 2012 + SBD.
dataset_type = 'PascalVOCDataset'
data_root = 'data/synthetic_voc/VOCdevkit/VOC2012'
crop_size = (128, 128)
# The generator already jitters colour and adds noise, so there is no PhotoMetricDistortion, and
# the scale range is narrower than on real data (docs/study.md, "Protocol").
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
                 ann_file='ImageSets/Segmentation/train_aug.txt', pipeline=train_pipeline))
# Validation images all have one size, so they batch: 8 at a time evaluates the set 1.4x faster
# on one CPU thread than one at a time (bench.evaluation, docs/study.md "The cost of a trial").
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
                 ann_file='ImageSets/Segmentation/val.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PixIoUMetric')
test_evaluator = val_evaluator
