# Pascal VOC 2012 + SBD aug (dvc stage data@voc), mmseg's pipelines at 512x512. The stage puts
# every label (train_aug and val) in SegmentationClassAug.
_base_ = ['mmseg::_base_/datasets/pascal_voc12.py']
data_root = 'data/voc/VOCdevkit/VOC2012'
train_dataloader = dict(
    dataset=dict(data_root=data_root,
                 data_prefix=dict(seg_map_path='SegmentationClassAug'),
                 ann_file='ImageSets/Segmentation/train_aug.txt'))
val_dataloader = dict(
    dataset=dict(data_root=data_root, data_prefix=dict(seg_map_path='SegmentationClassAug')))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='PixIoUMetric')
test_evaluator = val_evaluator
