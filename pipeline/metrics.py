"""mIoU and mPixIoU as one MMEngine evaluator metric, registered in mmseg's METRICS.

Use with ``custom_imports=dict(imports=['pipeline.losses', 'pipeline.metrics'])`` and
``val_evaluator = dict(type='PixIoUMetric')``. Like mmseg's IoUMetric, the IoU of a class is
taken over the whole dataset (Σ intersections / Σ unions), reported in percent; PixIoU follows
the same batch convention: (Σ_b |G_b∩P_b| − Σ_b Σ_{M_b} δ) / Σ_b |U_b|.
"""
from __future__ import annotations

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmseg.registry import METRICS

from .losses.geometry import PixIoUCounts, iou_and_pixiou, pixiou_counts


@METRICS.register_module()
class PixIoUMetric(BaseMetric):
    """Reports mIoU, mPixIoU and, per class, IoU.<name> and PixIoU.<name> (percent)."""

    def __init__(self, ignore_index: int = 255, collect_device: str = "cpu",
                 prefix: str | None = None, **kwargs):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples) -> None:
        num_classes = len(self.dataset_meta["classes"])
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0)
            label = sample["gt_sem_seg"]["data"].squeeze(0).to(pred)
            self.results.append(pixiou_counts(pred[None], label[None], num_classes,
                                              self.ignore_index))

    def compute_metrics(self, results: list) -> dict[str, float]:
        totals = PixIoUCounts(*(torch.stack(parts).sum(0) for parts in zip(*results, strict=True)))
        iou, pixiou = iou_and_pixiou(totals)
        names = self.dataset_meta["classes"]
        percent = lambda x: round(float(x) * 100, 2)  # noqa: E731
        metrics = {"mIoU": percent(iou.nanmean()), "mPixIoU": percent(pixiou.nanmean())}
        rows = []
        for name, class_iou, class_pixiou in zip(names, iou, pixiou, strict=True):
            metrics[f"IoU.{name}"] = percent(class_iou)
            metrics[f"PixIoU.{name}"] = percent(class_pixiou)
            rows.append(f"| {name:>16} | {percent(class_iou):>6} | {percent(class_pixiou):>6} |")
        table = "\n".join(["per class results:", f"| {'Class':>16} |    IoU | PixIoU |", *rows])
        print_log("\n" + table, logger=MMLogger.get_current_instance())
        return metrics
