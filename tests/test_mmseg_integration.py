"""The losses and the metric inside MMSegmentation / MMEngine, as a config would use them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import METRICS, MODELS
from mmseg.structures import SegDataSample

from tests.reference import pixiou_reference

NUM_CLASSES = 4

CONFIG = """
custom_imports = dict(imports=['pipeline.losses', 'pipeline.metrics'], allow_failed_imports=False)
default_scope = 'mmseg'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.7, 116.3, 103.5],
                           std=[58.4, 57.1, 57.4], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size=(32, 32)),
    backbone=dict(type='ResNetV1c', depth=18, stem_channels=16, base_channels=16,
                  num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                  strides=(1, 2, 1, 1), norm_cfg=norm_cfg, contract_dilation=True),
    decode_head=dict(type='FCNHead', in_channels=128, in_index=3, channels=32, num_convs=1,
                     concat_input=False, dropout_ratio=0.1, num_classes=4, norm_cfg=norm_cfg,
                     align_corners=False, loss_decode=LOSS),
    auxiliary_head=dict(type='FCNHead', in_channels=64, in_index=2, channels=16, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=4, norm_cfg=norm_cfg,
                        align_corners=False, loss_decode=AUX_LOSS),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
val_evaluator = dict(type='PixIoUMetric')
"""

LOSSES = {
    "lovasz": ("[dict(type='LovaszSoftmaxLoss', loss_weight=1.0)]", ["loss_lovasz"]),
    "pixiou": ("[dict(type='LovaszPixIoULoss', per_image=True)]", ["loss_pixiou"]),
    "ce_lovasz": ("[dict(type='CrossEntropyLoss', loss_weight=1.0),"
                  " dict(type='LovaszSoftmaxLoss', loss_weight=0.5)]", ["loss_ce", "loss_lovasz"]),
    "ce_pixiou": ("[dict(type='CrossEntropyLoss', loss_weight=1.0),"
                  " dict(type='LovaszPixIoULoss', loss_weight=0.5)]", ["loss_ce", "loss_pixiou"]),
}


def load_config(tmp_path, loss):
    text = CONFIG.replace("AUX_LOSS", "dict(type='LovaszPixIoULoss', loss_weight=0.4)")
    path = tmp_path / "fcn_r18-tiny_1xb2-1k_toy-32x32.py"
    path.write_text(text.replace("LOSS", LOSSES[loss][0]))
    cfg = Config.fromfile(str(path))  # runs custom_imports: registers our modules
    init_default_scope("mmseg")
    return cfg


def toy_batch(seed, batch=2, size=32):
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(batch):
        label = np.zeros((size, size), dtype=np.int64)
        image = rng.integers(0, 60, (3, size, size))
        for c in range(1, NUM_CLASSES):
            r, q = rng.integers(0, size - 10, 2)
            label[r:r + 10, q:q + 10] = c
            image[c - 1, r:r + 10, q:q + 10] += 150
        label[:2] = 255
        inputs.append(torch.from_numpy(image).to(torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label)[None])
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                                 pad_shape=(size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_one_training_step_with_each_loss(tmp_path, loss):
    torch.manual_seed(0)
    cfg = load_config(tmp_path, loss)
    model = MODELS.build(cfg.model)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    head = model.decode_head.conv_seg.weight
    before = head.detach().clone()

    log_vars = model.train_step(toy_batch(0), optim_wrapper)  # mmengine's training step

    expected = {f"decode.{name}" for name in LOSSES[loss][1]} | {"aux.loss_pixiou"}
    assert expected <= set(log_vars)
    assert all(np.isfinite(float(log_vars[k])) and float(log_vars[k]) > 0 for k in expected)
    assert float(log_vars["loss"]) == pytest.approx(sum(float(log_vars[k]) for k in expected),
                                                    rel=1e-5)
    assert not torch.equal(before, head.detach())  # gradients reached the decode head


def test_loss_module_rejects_pixel_weights_and_bad_names(tmp_path):
    load_config(tmp_path, "pixiou")
    loss = MODELS.build(dict(type="LovaszPixIoULoss"))
    logits, labels = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="per-pixel weights"):
        loss(logits, labels, weight=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="loss_"):
        MODELS.build(dict(type="LovaszSoftmaxLoss", loss_name="lovasz"))
    with pytest.raises(ValueError, match="outside"):
        loss(logits, torch.full((1, 4, 4), 3))


def test_pixiou_metric_matches_independent_computation(tmp_path):
    load_config(tmp_path, "pixiou")
    metric = METRICS.build(dict(type="PixIoUMetric"))
    classes = ("background", "square", "disc", "bar")
    metric.dataset_meta = dict(classes=classes)
    rng = np.random.default_rng(3)
    labels, preds = [], []
    for _ in range(5):
        label = rng.integers(0, NUM_CLASSES, (1, 24, 20))
        label[:, rng.random((24, 20)) < 0.1] = 255
        pred = np.where(rng.random((1, 24, 20)) < 0.7, label % NUM_CLASSES,
                        rng.integers(0, NUM_CLASSES, (1, 24, 20)))
        pred[0, :6, :6] = 3
        labels.append(label)
        preds.append(pred)
        sample = dict(pred_sem_seg=dict(data=torch.from_numpy(pred)),
                      gt_sem_seg=dict(data=torch.from_numpy(label)))
        metric.process({}, [sample])
    metrics = metric.evaluate(size=5)

    expected_iou, expected_pixiou = [], []
    for c, name in enumerate(classes):
        intersection = union = delta = 0.0
        for label, pred in zip(labels, preds, strict=True):
            valid = label[0] != 255
            gt, pr = (label[0] == c) & valid, (pred[0] == c) & valid
            _, _, d, n_union = pixiou_reference(gt, pr)
            intersection += (gt & pr).sum()
            union += n_union
            delta += d.sum()
        assert metrics[f"IoU.{name}"] == pytest.approx(100 * intersection / union, abs=0.006)
        assert metrics[f"PixIoU.{name}"] == pytest.approx(100 * (intersection - delta) / union,
                                                          abs=0.006)
        assert metrics[f"PixIoU.{name}"] < metrics[f"IoU.{name}"]
        expected_iou.append(100 * intersection / union)
        expected_pixiou.append(100 * (intersection - delta) / union)
    # the means: of the metric's own per-class values, and of the independent ones
    assert metrics["mIoU"] == pytest.approx(np.mean([metrics[f"IoU.{n}"] for n in classes]),
                                            abs=0.01)
    assert metrics["mPixIoU"] == pytest.approx(
        np.mean([metrics[f"PixIoU.{n}"] for n in classes]), abs=0.01)
    assert metrics["mIoU"] == pytest.approx(np.mean(expected_iou), abs=0.01)
    assert metrics["mPixIoU"] == pytest.approx(np.mean(expected_pixiou), abs=0.01)
