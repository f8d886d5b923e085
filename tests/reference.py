"""Independent, deliberately naive implementations used as test oracles.

`berman_*` transcribes Berman et al.'s reference lovasz_losses.py (a Python loop over classes and
images, torch.sort + autograd); `pixiou_reference` writes docs/pixiou.md, "The measure", pixel
by pixel in numpy. Neither shares code with pipeline.losses.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def berman_lovasz_grad(gt_sorted):
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def _berman_flat(probas, labels, classes="present"):
    if probas.numel() == 0:
        return probas.sum() * 0.0
    losses = []
    class_to_sum = list(range(probas.size(1))) if classes in ("all", "present") else classes
    for c in class_to_sum:
        fg = (labels == c).to(probas.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probas[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, berman_lovasz_grad(fg[perm])))
    return torch.stack(losses).mean() if losses else probas.sum() * 0.0


def _flatten(probas, labels, ignore):
    num_classes = probas.shape[1]
    probas = probas.permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    valid = labels != ignore
    return probas[valid], labels[valid]


def berman_lovasz_softmax(probas, labels, classes="present", per_image=False, ignore=255):
    if per_image:
        return torch.stack([_berman_flat(*_flatten(p[None], y[None], ignore), classes)
                            for p, y in zip(probas, labels, strict=True)]).mean()
    return _berman_flat(*_flatten(probas, labels, ignore), classes)


def pixiou_reference(gt: np.ndarray, pred: np.ndarray):
    """One image, one class: bool masks [H, W] -> (IoU, PixIoU, delta [H, W], |U|)."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    union = gt | pred
    n_union = int(union.sum())
    delta = np.zeros(gt.shape)
    if n_union == 0:
        return 1.0, 1.0, delta, 0
    iou = (gt & pred).sum() / n_union
    if gt.any():
        height, width = gt.shape
        coords = {(r, q): (r + 0.5, q + 0.5) for r in range(height) for q in range(width)}
        centre_g = np.mean([coords[i] for i in zip(*np.nonzero(gt), strict=True)], axis=0)
        centre_p = (np.mean([coords[i] for i in zip(*np.nonzero(pred), strict=True)], axis=0)
                    if pred.any() else centre_g)
        rows, cols = np.nonzero(union)
        diagonal = math.hypot(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        for (r, q), x in coords.items():
            if gt[r, q] and not pred[r, q]:
                delta[r, q] = min(1.0, float(np.linalg.norm(np.subtract(x, centre_p))) / diagonal)
            elif pred[r, q] and not gt[r, q]:
                delta[r, q] = min(1.0, float(np.linalg.norm(np.subtract(x, centre_g))) / diagonal)
    return float(iou), float(iou - delta.sum() / n_union), delta, n_union
