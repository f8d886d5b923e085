"""The gradient study: the PixIoU paper's point that IoU's gradient vanishes where the
prediction is merely in the wrong place, and PixIoU's does not, measured on the losses themselves.

Each case is one class on a small image: a ground-truth blob G and a predicted blob P with
p(class) = 0.85 on P and 0.10 elsewhere (PIXIOU_SPEC.md §5), P moved by a shift s. We record the
mean |∂loss/∂p(class)| over the false-positive pixels P \\ G, for Lovász-Softmax and
Lovász-PixIoU, at every s:

- no overlap:        3x3 blobs, P moved right by s = 3…11 pixels, never touching G (IoU = 0);
- partial overlap:   8x8 blobs, P moved right by s = 1…8, from IoU 0.78 down to 0;
- equal-area shift:  G 6x6; P is G without its last column plus one 6-pixel column s pixels
                     to the right: the same area and the same IoU (30/42) at every s, only the
                     false positives' location changes.
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
    Case("no overlap", "3x3 blobs, P shifted away from G without touching it (IoU 0).",
         tuple(range(3, 12)), (16, 16), side=3),
    Case("partial overlap", "8x8 blobs, P shifted until it no longer overlaps G.",
         tuple(range(1, 9)), (12, 20), side=8),
    Case("equal-area shift", "one 6-pixel column of G moved s pixels away (IoU fixed at 30/42).",
         tuple(range(0, 12)), (10, 22), side=6, move_one_column=True),
)


def fp_gradient(loss_fn, gt: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean |∂loss/∂p(class)| over the false positives of `pred`, in float64."""
    p = torch.where(pred, P_PREDICTED, P_ELSEWHERE).double()
    probas = torch.stack([1 - p, p])[None].requires_grad_(True)  # [1, 2, H, W]
    labels = gt.long()[None]  # [1, H, W]
    (grad,) = torch.autograd.grad(loss_fn(probas, labels, classes=[1]), probas)
    false_positives = pred & ~gt
    return float(grad[0, 1][false_positives].abs().mean())


def iou(gt: torch.Tensor, pred: torch.Tensor) -> float:
    return float((gt & pred).sum() / (gt | pred).sum())


def gradient_study() -> list[dict]:
    """One row per case and shift: {case, shift, iou, <loss name>: mean |grad| on FP pixels}."""
    rows = []
    for case in CASES:
        for shift in case.shifts:
            gt, pred = case.masks(shift)
            row = {"case": case.name, "shift": shift, "iou": round(iou(gt, pred), 6)}
            row.update({name: round(fp_gradient(fn, gt, pred), 8) for name, fn in LOSSES.items()})
            rows.append(row)
    return rows


def summary_rows(points: list[dict]) -> list[dict]:
    """Per case: the shifts and each loss's gradients along them (for the report's table)."""
    rows = []
    for case in CASES:
        mine = [p for p in points if p["case"] == case.name]
        rows.append({"case": case.name, "description": case.description,
                     "shifts": [p["shift"] for p in mine],
                     **{name: [p[name] for p in mine] for name in LOSSES}})
    return rows
