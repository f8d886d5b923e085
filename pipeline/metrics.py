"""mIoU, image-mIoU and mPixIoU as one MMEngine evaluator metric, registered in mmseg's METRICS.

Use with ``custom_imports=dict(imports=['pipeline.losses', 'pipeline.metrics'])`` and
``val_evaluator = dict(type='PixIoUMetric')``. Like mmseg's IoUMetric, mIoU takes the IoU of a
class over the whole dataset (Σ intersections / Σ unions), in percent; PixIoU follows the same
batch convention: (Σ_b |G_b∩P_b| − Σ_b Σ_{M_b} δ) / Σ_b |U_b|. image-mIoU averages each image's
own IoU instead (`pipeline.measures`). Each image's counts are kept until the end, so mmengine
gathers them over the ranks (dropping its sampler's padding) before anything is summed.
"""
from __future__ import annotations

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmseg.registry import METRICS

from .losses.geometry import PixIoUCounts, image_iou, iou_and_pixiou, pixiou_counts
from .measures import IMAGE_MIOU, MIOU, MPIXIOU, PER_CLASS


@METRICS.register_module()
class PixIoUMetric(BaseMetric):
    """Reports mIoU, image-mIoU, mPixIoU and, per class, IoU.<name>, image-IoU.<name> and
    PixIoU.<name> (percent)."""

    def __init__(self, ignore_index: int = 255, collect_device: str = "cpu",
                 prefix: str | None = None, **kwargs):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples) -> None:
        """One PixIoUCounts per image ([C] each)."""
        num_classes = len(self.dataset_meta["classes"])
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0)
            label = sample["gt_sem_seg"]["data"].squeeze(0).to(pred)
            self.results.append(pixiou_counts(pred[None], label[None], num_classes,
                                              self.ignore_index))

    def compute_metrics(self, results: list) -> dict[str, float]:
        per_image = PixIoUCounts(*(torch.stack(parts) for parts in zip(*results, strict=True)))
        iou, pixiou = iou_and_pixiou(PixIoUCounts(*(part.sum(0) for part in per_image)))
        image, image_mean = image_iou(per_image.intersection, per_image.union)
        names = self.dataset_meta["classes"]
        percent = lambda x: round(float(x) * 100, 2)  # noqa: E731
        metrics = {MIOU: percent(iou.nanmean()), IMAGE_MIOU: percent(image_mean),
                   MPIXIOU: percent(pixiou.nanmean())}
        rows = []
        for name, *values in zip(names, iou, image, pixiou, strict=True):
            values = [percent(v) for v in values]
            for measure, value in zip((MIOU, IMAGE_MIOU, MPIXIOU), values, strict=True):
                metrics[f"{PER_CLASS[measure]}.{name}"] = value
            rows.append(f"| {name:>16} | " + " | ".join(f"{v:>9}" for v in values) + " |")
        table = "\n".join(["per class results:",
                           f"| {'Class':>16} |       IoU | image-IoU |    PixIoU |", *rows])
        print_log("\n" + table, logger=MMLogger.get_current_instance())
        return metrics
