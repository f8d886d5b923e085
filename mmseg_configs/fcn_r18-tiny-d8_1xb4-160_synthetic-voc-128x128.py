_base_ = [
    '_base_/models/fcn_r18-tiny-d8.py', '_base_/datasets/synthetic_voc.py',
    '_base_/default_runtime.py', '_base_/schedules/schedule_160.py'
]
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=21))
