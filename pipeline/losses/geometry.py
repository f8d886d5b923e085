"""PixIoU geometry (docs/pixiou.md, "The measure"): where the mispredicted pixels of each class lie.

For one image and class c, with G the ground truth and P the prediction (valid pixels only),
FN = G∖P, FP = P∖G, U = G∪P and x_i = (row+½, col+½):

    δ_i = min(1, ‖x_i − c_P‖ / ℓ)  on FN,     δ_j = min(1, ‖x_j − c_G‖ / ℓ)  on FP,

c_G, c_P the centres of G and P (c_P := c_G when P = ∅), ℓ the diagonal of U's enclosing box;
δ ≡ 0 when G = ∅. PixIoU = IoU − Σ_M δ / |U|. Everything here is vectorised over [B, C].
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def check_labels(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError if labels hold values outside [0, C) other than the ignore index."""
    out_of_range = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if out_of_range.any():
        bad = sorted(set(labels[out_of_range][:64].tolist()))
        raise ValueError(f"labels hold {int(out_of_range.sum())} value(s) outside "
                         f"[0, {num_classes}) that are not the ignore index {ignore_index}: {bad}")


def one_hot_masks(labels: Tensor, num_classes: int, valid: Tensor) -> Tensor:
    """[B, H, W] class indices -> [B, C, H, W] bool masks, False on invalid pixels."""
    index = labels.masked_fill(~valid, 0).long()
    masks = torch.zeros((labels.shape[0], num_classes) + labels.shape[1:], dtype=torch.bool,
                        device=labels.device)
    masks.scatter_(1, index.unsqueeze(1), valid.unsqueeze(1))
    return masks


def _centre(rows: Tensor, cols: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Mean pixel centre from a mask's row/column histograms ([B, C, H], [B, C, W]) -> [B, C]."""
    r = torch.arange(rows.shape[-1], dtype=rows.dtype, device=rows.device) + 0.5
    q = torch.arange(cols.shape[-1], dtype=cols.dtype, device=cols.device) + 0.5
    count = count.clamp(min=1)
    return (rows * r).sum(-1) / count, (cols * q).sum(-1) / count


def _extent(occupied: Tensor) -> Tensor:
    """Length (last − first + 1) of the occupied span of each [..., L] bool row; 0 if empty."""
    length = occupied.shape[-1]
    first = occupied.int().argmax(-1)
    last = length - 1 - occupied.flip(-1).int().argmax(-1)
    return torch.where(occupied.any(-1), last - first + 1, 0)


class Geometry(NamedTuple):
    """Per-(image, class) PixIoU ingredients."""

    delta: Tensor         # [B, C, H, W] δ on mispredicted pixels, 0 elsewhere
    intersection: Tensor  # [B, C] |G ∩ P|
    union: Tensor         # [B, C] |G ∪ P|


@torch.no_grad()
def pixiou_geometry(gt: Tensor, pred: Tensor, dtype: torch.dtype = torch.float32) -> Geometry:
    """δ (of `dtype`), |G∩P| and |G∪P| for bool masks gt = G, pred = P of shape [B, C, H, W].

    Everything is per (dim 0, dim 1) pair, so a [C, B, H, W] layout works the same way.
    """
    # Float sums of 0/1 are exact below 2**24 pixels, and much faster than bool sums (which
    # convert to int64 on every call). One full-size float copy is alive at a time; the
    # [B, C, H] histograms are small, so counts and centres are float64 from there on.
    counts = torch.float64

    def histograms(mask: Tensor) -> tuple[Tensor, Tensor]:
        as_float = mask.to(dtype)
        return as_float.sum(3).to(counts), as_float.sum(2).to(counts)

    gt_rows, gt_cols = histograms(gt)
    pr_rows, pr_cols = histograms(pred)
    n_gt, n_pred = gt_rows.sum(-1), pr_rows.sum(-1)
    intersection = histograms(gt & pred)[0].sum(-1)
    union = n_gt + n_pred - intersection

    gt_r, gt_q = _centre(gt_rows, gt_cols, n_gt)
    pr_r, pr_q = _centre(pr_rows, pr_cols, n_pred)
    no_pred = n_pred == 0
    pr_r, pr_q = torch.where(no_pred, gt_r, pr_r), torch.where(no_pred, gt_q, pr_q)
    diagonal = torch.hypot(_extent((gt_rows + pr_rows) > 0).to(counts),
                           _extent((gt_cols + pr_cols) > 0).to(counts)).clamp(min=1)

    # Squared distances in units of ℓ, built from [.., H] and [.., W] offsets: FN pixels (in G)
    # measure to c_P, FP pixels (outside G) to c_G.
    r = torch.arange(gt.shape[2], dtype=counts, device=gt.device) + 0.5
    q = torch.arange(gt.shape[3], dtype=counts, device=gt.device) + 0.5

    def offsets(coords: Tensor, centre: Tensor) -> Tensor:
        return ((coords - centre[..., None]) / diagonal[..., None]).to(dtype) ** 2

    delta = torch.where(gt, offsets(r, pr_r)[..., :, None], offsets(r, gt_r)[..., :, None])
    delta += torch.where(gt, offsets(q, pr_q)[..., None, :], offsets(q, gt_q)[..., None, :])
    delta.clamp_(max=1.0).sqrt_()
    delta.masked_fill_(gt == pred, 0.0)  # only on M = FN ∪ FP
    delta.mul_((n_gt > 0).to(dtype)[..., None, None])  # δ ≡ 0 where G = ∅
    return Geometry(delta, intersection, union)


def pixiou_weights(gt: Tensor, pred: Tensor, per_image: bool,
                   dtype: torch.dtype = torch.float32, image_dim: int = 0) -> Tensor:
    """Frozen modular weights w = δ / |U| of the Lovász-PixIoU surrogate, shaped like gt.

    gt, pred: [B, C, H, W] bool masks ([C, B, H, W] with image_dim=1).
    per_image: |U| of each image; else |U| summed over the images (one row per class).
    """
    geometry = pixiou_geometry(gt, pred, dtype)
    union = geometry.union if per_image else geometry.union.sum(image_dim, keepdim=True)
    return geometry.delta.mul_((1.0 / union.clamp(min=1)).to(dtype)[..., None, None])


class PixIoUCounts(NamedTuple):
    """Per-class sums over images, from which dataset-level IoU and PixIoU follow."""

    intersection: Tensor  # [C] Σ_b |G_b ∩ P_b|
    union: Tensor         # [C] Σ_b |G_b ∪ P_b|
    delta: Tensor         # [C] Σ_b Σ_{M_b} δ


def pixiou_counts(pred: Tensor, labels: Tensor, num_classes: int,
                  ignore_index: int = 255) -> PixIoUCounts:
    """Accumulable counts of hard predictions [B, H, W] against labels [B, H, W]."""
    if pred.shape != labels.shape or pred.dim() != 3:
        raise ValueError(f"pred and labels must both be [B, H, W], got {tuple(pred.shape)} "
                         f"and {tuple(labels.shape)}")
    check_labels(labels, num_classes, ignore_index)
    valid = labels != ignore_index
    if ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError(f"predictions must lie in [0, {num_classes})")
    geometry = pixiou_geometry(one_hot_masks(labels, num_classes, valid),
                               one_hot_masks(pred, num_classes, valid))
    return PixIoUCounts(geometry.intersection.sum(0), geometry.union.sum(0),
                        geometry.delta.sum((0, 2, 3), dtype=torch.float64))


def iou_and_pixiou(counts: PixIoUCounts) -> tuple[Tensor, Tensor]:
    """Per-class IoU and PixIoU [C] from counts; NaN where a class has an empty union."""
    union = counts.union
    iou = counts.intersection / union
    pixiou = (counts.intersection - counts.delta) / union
    nan = torch.full_like(iou, float("nan"))
    return torch.where(union > 0, iou, nan), torch.where(union > 0, pixiou, nan)


def image_iou(intersection: Tensor, union: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image IoU averaged per class over the images where it is defined (image-mIoU's terms).

    intersection, union: [N, C] per-image counts |G_ic ∩ P_ic|, |G_ic ∪ P_ic|.
    Returns (per-class [C], mean): IoU_ic = intersection / union where union > 0; per class the
    mean over those images (NaN for a class defined in no image); the mean over the classes
    defined in at least one image (NaN if none). A class absent from both the image's ground
    truth and its prediction says nothing about that image and is left out, unlike Berman et
    al.'s reference `iou(..., per_image=True)`, which counts it as 1 (docs/study.md).
    """
    if intersection.shape != union.shape or intersection.dim() != 2:
        raise ValueError(f"intersection and union must both be [N, C], got "
                         f"{tuple(intersection.shape)} and {tuple(union.shape)}")
    intersection, union = intersection.double(), union.double()
    defined = union > 0
    per_image = torch.where(defined, intersection / union.clamp(min=1), 0.0)
    images = defined.sum(0)
    per_class = torch.where(images > 0, per_image.sum(0) / images.clamp(min=1), float("nan"))
    return per_class, per_class.nanmean()
