# mmseg model zoo: deeplabv3plus_r101-d8_4xb2-80k_cityscapes-769x769, ImageNet-pretrained R-101.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py', '_base_/datasets/cityscapes_769x769.py',
    '_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_80k.py'
]
crop_size = (769, 769)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(align_corners=True),
    auxiliary_head=dict(align_corners=True),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)))
