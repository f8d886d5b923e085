"""The gradient study: the PixIoU paper's point that IoU's gradient vanishes where the
prediction is merely in the wrong place, and PixIoU's does not, measured on the losses themselves.

Each case is one image with two classes, background (0) and the object (1): a ground-truth blob
G and a predicted blob P, with p(object) = 0.85 on P and 0.10 elsewhere (docs/pixiou.md, "The
gradient study"), P moved by a shift s. We record the mean |gradient| over the false-positive
pixels P \\ G of the object's channel, for Lovász-Softmax and Lovász-PixIoU, at every s, in two
settings (`SETTINGS`):

- one class, w.r.t. probabilities: the loss of the object class alone (classes=[1]),
  differentiated with respect to p(object), as in the paper's argument;
- the training default: classes='present' (background and object, averaged), differentiated
  with respect to the object's logit, as a training step sees it (the background's term also
  reaches the object's logit through the softmax).

The cases (`CASES`), each with its exact geometry in its description.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import lovasz_pixiou, lovasz_softmax

LOSSES = {"Lovász-Softmax": lovasz_softmax, "Lovász-PixIoU": lovasz_pixiou}
P_PREDICTED, P_ELSEWHERE = 0.85, 0.10


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    shifts: tuple[int, ...]
    size: tuple[int, int]
    side: int  # G is a side x side square at (2, 2)
    move_one_column: bool = False  # P = G with its last column moved; else all of G moved

    def masks(self, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, P) boolean [H, W] masks at this shift."""
        gt = torch.zeros(self.size, dtype=torch.bool)
        end = 2 + self.side
        gt[2:end, 2:end] = True
        pred = torch.zeros_like(gt)
        if self.move_one_column:
            pred[2:end, 2:end - 1] = True
            pred[2:end, end + shift] = True
        else:
            pred[2:end, 2 + shift:end + shift] = True
        return gt, pred


CASES = (
    Case("no overlap", "16x16 image; G and P are 3x3 squares, P shifted right by s = 3…11: at "
         "s = 3 the two touch edge to edge, and they never overlap (IoU 0 throughout).",
         tuple(range(3, 12)), (16, 16), side=3),
    Case("partial overlap", "12x20 image; G and P are 8x8 squares, P shifted right by "
         "s = 1…8: IoU falls from 56/72 = 0.78 at s = 1 to 0 at s = 8, where they touch.",
         tuple(range(1, 9)), (12, 20), side=8),
    Case("equal-area shift", "10x22 image; G is a 6x6 square; P is G without its last column "
         "plus a 6-pixel column s = 0…11 pixels right of G (touching it at s = 0): the same "
         "area and IoU (30/42) at every s, only where the false positives lie changes.",
         tuple(range(0, 12)), (10, 22), side=6, move_one_column=True),
)


@dataclass(frozen=True)
class Setting:
    """What is differentiated: which classes the loss averages, and with respect to what."""

    label: str  # appended to the loss name in columns ('' for the paper's setting)
    classes: object  # the losses' `classes` argument
    wrt_logits: bool


SETTINGS = (
    Setting("", classes=[1], wrt_logits=False),  # one class, w.r.t. p(object)
    Setting("training", classes="present", wrt_logits=True),  # w.r.t. the object's logit
)
#: Column of each (loss, setting): "Lovász-PixIoU" and "Lovász-PixIoU, training".
COLUMNS = {(f"{loss}, {setting.label}" if setting.label else loss): (fn, setting)
           for setting in SETTINGS for loss, fn in LOSSES.items()}


def fp_gradient(loss_fn, setting: Setting, gt: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean |gradient| over the false positives of `pred` in the object's channel, in float64."""
    p = torch.where(pred, P_PREDICTED, P_ELSEWHERE).double()
    probas = torch.stack([1 - p, p])[None]  # [1, 2, H, W]
    labels = gt.long()[None]  # [1, H, W]
    # The logits whose softmax is exactly these probabilities
    leaf = (probas.log() if setting.wrt_logits else probas).requires_grad_(True)
    inputs = leaf.softmax(1) if setting.wrt_logits else leaf
    (grad,) = torch.autograd.grad(loss_fn(inputs, labels, classes=setting.classes), leaf)
    false_positives = pred & ~gt
    return float(grad[0, 1][false_positives].abs().mean())


def iou(gt: torch.Tensor, pred: torch.Tensor) -> float:
    return float((gt & pred).sum() / (gt | pred).sum())


def gradient_study() -> list[dict]:
    """One row per case and shift: {case, shift, iou, <column>: mean |grad| on FP pixels}."""
    rows = []
    for case in CASES:
        for shift in case.shifts:
            gt, pred = case.masks(shift)
            row = {"case": case.name, "shift": shift, "iou": round(iou(gt, pred), 6)}
            row.update({column: round(fp_gradient(fn, setting, gt, pred), 8)
                        for column, (fn, setting) in COLUMNS.items()})
            rows.append(row)
    return rows


def summary_rows(points: list[dict]) -> list[dict]:
    """Per case: the shifts and each loss's gradients along them (for the report's table)."""
    rows = []
    for case in CASES:
        mine = [p for p in points if p["case"] == case.name]
        rows.append({"case": case.name, "description": case.description,
                     "shifts": [p["shift"] for p in mine],
                     **{column: [p[column] for p in mine] for column in COLUMNS}})
    return rows
