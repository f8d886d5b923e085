# mmseg model zoo: deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512, ImageNet-pretrained R-101.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py', '_base_/datasets/voc12aug.py',
    '_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(num_classes=21),
    auxiliary_head=dict(num_classes=21))
