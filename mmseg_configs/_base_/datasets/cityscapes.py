# Cityscapes (dvc stage data@cityscapes, labelTrainIds), mmseg's pipelines at 512x1024.
_base_ = ['mmseg::_base_/datasets/cityscapes.py']
val_evaluator = dict(_delete_=True, type='PixIoUMetric')
test_evaluator = val_evaluator
