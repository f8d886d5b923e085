# mmseg model zoo: deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024, ImageNet-pretrained R-101.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py', '_base_/datasets/cityscapes.py',
    '_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_80k.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101))
