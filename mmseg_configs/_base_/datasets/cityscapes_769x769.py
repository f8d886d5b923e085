# Cityscapes (dvc stage data@cityscapes, labelTrainIds), mmseg's pipelines at 769x769.
_base_ = ['mmseg::_base_/datasets/cityscapes_769x769.py']
val_evaluator = dict(_delete_=True, type='PixIoUMetric')
test_evaluator = val_evaluator
