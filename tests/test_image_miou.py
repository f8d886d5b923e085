"""image-mIoU (pipeline.measures): against an independent per-image computation on a hand-built
set where it differs from dataset mIoU, through PixIoUMetric in one process and over 2 gloo
ranks."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.losses.geometry import image_iou

IGNORE = 255
CLASSES = ("background", "a", "b", "c")


def hand_built_set() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(predictions, labels) of five 8x8 images, 4 classes, built to make per-image and dataset
    IoU disagree."""
    labels, preds = [], []
    # 1. one small object of class a (4 pixels), half found
    label = np.zeros((8, 8), np.int64)
    label[0:2, 0:2] = 1
    pred = np.zeros((8, 8), np.int64)
    pred[0:2, 0:1] = 1
    labels.append(label), preds.append(pred)
    # 2. several classes: a large a, a b, a c; some confusion between them
    label = np.zeros((8, 8), np.int64)
    label[:, 0:4] = 1
    label[0:4, 4:8] = 2
    label[4:8, 6:8] = 3
    pred = label.copy()
    pred[0:2, 0:4] = 2   # some of a taken for b
    pred[4:6, 6:8] = 0   # some of c missed
    labels.append(label), preds.append(pred)
    # 3. ignored pixels: a band of 255 whose predictions must not count
    label = np.zeros((8, 8), np.int64)
    label[2:6, 2:6] = 2
    label[0, :] = IGNORE
    pred = np.zeros((8, 8), np.int64)
    pred[2:6, 2:6] = 2
    pred[0, :] = 3       # predicted c on ignored pixels only: no c anywhere else
    labels.append(label), preds.append(pred)
    # 4. a class predicted but absent: b predicted, the image holds background and c
    label = np.zeros((8, 8), np.int64)
    label[5:8, 5:8] = 3
    pred = label.copy()
    pred[0:2, 0:2] = 2
    labels.append(label), preds.append(pred)
    # 5. every pixel ignored: the image defines no class at all (and makes 2 ranks pad)
    labels.append(np.full((8, 8), IGNORE, np.int64)), preds.append(np.ones((8, 8), np.int64))
    return preds, labels


def independent_image_miou(preds, labels, num_classes: int) -> tuple[list[float], float]:
    """The issue's definition, written out with Python loops over images and classes."""
    per_class = []
    for c in range(num_classes):
        ious = []
        for pred, label in zip(preds, labels, strict=True):
            valid = label != IGNORE
            g, p = (label == c) & valid, (pred == c) & valid
            union = int((g | p).sum())
            if union:
                ious.append(int((g & p).sum()) / union)
        per_class.append(sum(ious) / len(ious) if ious else float("nan"))
    defined = [v for v in per_class if v == v]
    return per_class, sum(defined) / len(defined)


def dataset_miou(preds, labels, num_classes: int) -> float:
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, label in zip(preds, labels, strict=True):
        valid = label != IGNORE
        for c in range(num_classes):
            g, p = (label == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    return float(np.mean(inter[union > 0] / union[union > 0]))


def counts(preds, labels, num_classes):
    from pipeline.losses.geometry import pixiou_counts

    parts = [pixiou_counts(torch.as_tensor(p)[None], torch.as_tensor(lab)[None], num_classes,
                           IGNORE) for p, lab in zip(preds, labels, strict=True)]
    return torch.stack([c.intersection for c in parts]), torch.stack([c.union for c in parts])


def test_image_miou_is_the_mean_over_defined_images_then_classes():
    preds, labels = hand_built_set()
    per_class, mean = image_iou(*counts(preds, labels, len(CLASSES)))
    want_per_class, want = independent_image_miou(preds, labels, len(CLASSES))
    assert per_class.tolist() == pytest.approx(want_per_class, nan_ok=True)
    assert float(mean) == pytest.approx(want)
    # the set was built so that the two measures part ways
    assert abs(want - dataset_miou(preds, labels, len(CLASSES))) > 0.05


def test_a_class_absent_from_label_and_prediction_is_left_out_not_counted_as_1():
    label = torch.tensor([[10.0, 0.0], [5.0, 0.0]])  # class 1 nowhere in either image
    union = torch.tensor([[20.0, 0.0], [5.0, 0.0]])
    per_class, mean = image_iou(label, union)
    assert per_class[0] == pytest.approx(0.75) and torch.isnan(per_class[1])
    assert mean == pytest.approx(0.75)  # Berman's reference (EMPTY=1) would say 0.875


def test_image_iou_rejects_mismatched_counts():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        image_iou(torch.zeros(2, 3), torch.zeros(3, 2))


def _samples(preds, labels, indices):
    return [{"pred_sem_seg": {"data": torch.as_tensor(preds[i])[None]},
             "gt_sem_seg": {"data": torch.as_tensor(labels[i])[None]}} for i in indices]


def _metric():
    from pipeline.metrics import PixIoUMetric

    metric = PixIoUMetric()
    metric.dataset_meta = {"classes": CLASSES}
    return metric


def test_pixiou_metric_reports_image_miou_and_per_class_values():
    preds, labels = hand_built_set()
    metric = _metric()
    metric.process([], _samples(preds, labels, range(len(preds))))
    result = metric.evaluate(len(preds))
    want_per_class, want = independent_image_miou(preds, labels, len(CLASSES))
    assert result["image-mIoU"] == pytest.approx(round(want * 100, 2))
    assert result["mIoU"] == pytest.approx(round(dataset_miou(preds, labels, 4) * 100, 2))
    for name, value in zip(CLASSES, want_per_class, strict=True):
        assert result[f"image-IoU.{name}"] == pytest.approx(round(value * 100, 2), nan_ok=True)


def _rank(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        preds, labels = hand_built_set()
        size = len(preds)
        # mmengine's DefaultSampler: rank r takes r, r + world, ..., padded to equal length
        padded = list(range(size)) + list(range(size))[: (-size) % world]
        metric = _metric()
        metric.process([], _samples(preds, labels, padded[rank::world]))
        queue.put((rank, metric.evaluate(size)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2])
def test_over_two_gloo_ranks_equals_one_process(world):
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    preds, labels = hand_built_set()
    metric = _metric()
    metric.process([], _samples(preds, labels, range(len(preds))))
    alone = metric.evaluate(len(preds))
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    workers = [context.Process(target=_rank, args=(r, world, port, queue)) for r in range(world)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert results[0] == pytest.approx(alone, nan_ok=True)
    assert results[0]["image-mIoU"] == alone["image-mIoU"]
