"""Lovász-Softmax (Berman, Rannen Triki & Blaschko, CVPR 2018) and Lovász-PixIoU (Yu et al.,
ICML 2021; our definition in PIXIOU_SPEC.md), vectorised over every (image, class) row.

For one class c over a set of pixels, the errors are m_i = 1 - f_i(c) if y_i = c, else f_i(c).
With π sorting m in decreasing order and g the discrete derivative of the Jaccard loss along that
order (`lovasz_grad`), the Lovász extension of the Jaccard loss is

    L̄(m) = Σ_k m_{π_k} g_k = <m, g∘π⁻¹>,

and Lovász-PixIoU adds the modular term <w, m> of the frozen distance weights w:

    L̄_pix(m) = <m, g∘π⁻¹ + w>.

Both are piecewise linear in m, so their gradient is that coefficient vector itself. The kernel
computes it without autograd (one batched sort over all rows) and each row's loss is one dot
product: autograd never records the sort.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import one_hot_masks, pixiou_weights

#: Sort key of ignored pixels: below every error in [0, 1], so they sort after all valid pixels
#: and leave the Jaccard derivative of the valid ones untouched.
_IGNORED_KEY = -1.0


def lovasz_grad(gt_sorted: Tensor, dtype: torch.dtype = torch.float32,
                out: Tensor | None = None) -> Tensor:
    """Derivative of the Jaccard loss along sorted errors (Berman et al., Algorithm 1).

    gt_sorted: [..., N] bool ground truth of each row, in decreasing order of error.
    Returns [..., N] g (written into `out` if given), g_k = J_k - J_{k-1} with J_k the Jaccard
    loss of the k largest errors.
    """
    # 1 - |I|/|U| with |I| = gts - cumsum(gt) and |U| = gts + cumsum(1 - gt) simplifies to
    # J_k = k / (gts + k - cumsum(gt)_k): one cumsum, the rest in place.
    jaccard = torch.cumsum(gt_sorted, dim=-1, dtype=dtype)
    gts = jaccard[..., -1:].clone()
    rank = torch.arange(1, gt_sorted.shape[-1] + 1, dtype=dtype, device=gt_sorted.device)
    jaccard.neg_().add_(rank).add_(gts).reciprocal_().mul_(rank)
    g = torch.empty_like(jaccard) if out is None else out
    g[..., :1] = jaccard[..., :1]
    torch.sub(jaccard[..., 1:], jaccard[..., :-1], out=g[..., 1:])
    return g


@torch.no_grad()
def lovasz_coefficients(errors: Tensor, fg: Tensor, valid: Tensor) -> Tensor:
    """Gradient g∘π⁻¹ of the Lovász-Jaccard extension of every row, in the rows' pixel order.

    errors: [..., N] pixel errors m in [0, 1] (read, never written)
    fg:     [..., N] bool, pixels of the row's class
    valid:  bool, broadcastable to errors; False on ignored pixels
    Returns [..., N] coefficients of errors' dtype, exactly 0 on ignored pixels.
    """
    key = torch.where(valid, errors.detach(), _IGNORED_KEY)
    order = torch.empty(key.shape, dtype=torch.long, device=key.device)
    torch.sort(key, dim=-1, descending=True, out=(key, order))  # the one batched sort
    g = lovasz_grad(fg.gather(-1, order), key.dtype, out=key)  # sorted keys no longer needed
    # Ignored pixels sorted after every valid one: only their own g is meaningless.
    n_valid = valid.sum(-1, keepdim=True)
    g.masked_fill_(torch.arange(g.shape[-1], device=g.device) >= n_valid, 0.0)
    return torch.empty_like(g).scatter_(-1, order, g)


def check_inputs(probas: Tensor, labels: Tensor, ignore_index: int) -> None:
    """Raise ValueError naming what is wrong with (probas [B, C, H, W], labels [B, H, W])."""
    if probas.dim() != 4:
        raise ValueError(f"probas must be [B, C, H, W], got shape {tuple(probas.shape)}")
    batch, num_classes, height, width = probas.shape
    if labels.shape != (batch, height, width):
        raise ValueError(f"labels must be [B, H, W] = {(batch, height, width)} to match probas "
                         f"{tuple(probas.shape)}, got {tuple(labels.shape)}")
    if not probas.is_floating_point():
        raise ValueError(f"probas must be floating point, got {probas.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    # One cheap reduction; probas in [0, 1] cannot overflow it, so only NaN/Inf make it non-finite
    if not torch.isfinite(probas.sum()) and not torch.isfinite(probas).all():
        raise ValueError("probas contain NaN or Inf (non-finite logits?)")
    out_of_range = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if out_of_range.any():
        bad = sorted(set(labels[out_of_range][:64].tolist()))
        raise ValueError(f"labels hold {int(out_of_range.sum())} value(s) outside "
                         f"[0, {num_classes}) that are not the ignore index {ignore_index}: {bad}")


def _class_index(classes, num_classes: int) -> Tensor | None:
    """Rows kept for classes='present'|'all'|list of ints; None keeps every class."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a list of ints, got {classes!r}")
        return None
    index = torch.as_tensor(list(classes), dtype=torch.long)
    if index.numel() == 0 or (index < 0).any() or (index >= num_classes).any():
        raise ValueError(f"classes {list(classes)} must be a non-empty list in [0, {num_classes})")
    return index


def _lovasz(probas: Tensor, labels: Tensor, classes, per_image: bool, ignore_index: int,
            use_distance: bool) -> Tensor:
    check_inputs(probas, labels, ignore_index)
    batch, num_classes = probas.shape[:2]
    keep = _class_index(classes, num_classes)
    if probas.dtype != torch.float64:
        probas = probas.float()  # fp16/bf16 are accumulated in fp32
    valid = labels != ignore_index  # [B, H, W]

    # Rows [X, C, N]: X = B images of N = H*W pixels (per image), or X = 1 and N = B*H*W.
    if per_image:
        fg = one_hot_masks(labels.flatten(1), num_classes, valid.flatten(1))
        valid_rows = valid.reshape(batch, 1, -1)
        def to_rows(t: Tensor) -> Tensor:
            return t.reshape(batch, t.shape[1], -1)
    else:  # built straight in the row layout: no transposed copy of the masks
        fg = one_hot_masks(labels.reshape(1, -1), num_classes, valid.reshape(1, -1))
        valid_rows = valid.reshape(1, 1, -1)
        def to_rows(t: Tensor) -> Tensor:
            return t.transpose(0, 1).reshape(1, t.shape[1], -1)

    weights = None
    if use_distance:  # δ is per (image, class): view the row masks as [B, C, H, W] / [C, B, H, W]
        image_shape = (batch, num_classes) + labels.shape[1:]
        predicted = probas.detach().max(1).indices  # argmax, first on ties; faster on CPU
        if per_image:
            predicted = one_hot_masks(predicted.flatten(1), num_classes, valid.flatten(1))
            weights = pixiou_weights(fg.view(image_shape), predicted.view(image_shape), True,
                                     probas.dtype).view(fg.shape)
        else:
            predicted = one_hot_masks(predicted.reshape(1, -1), num_classes, valid.reshape(1, -1))
            swapped = (num_classes, batch) + labels.shape[1:]
            weights = pixiou_weights(fg.view(swapped), predicted.view(swapped), False,
                                     probas.dtype, image_dim=1).view(fg.shape)
    if keep is not None:
        probas, fg = probas[:, keep], fg[:, keep]
        weights = None if weights is None else weights[:, keep]

    probas = to_rows(probas)
    # m = |1[y=c] - f(c)|. Ignored pixels get coefficient 0: no loss and exactly zero gradient.
    errors = torch.where(fg, 1.0 - probas, probas)
    coefficients = lovasz_coefficients(errors, fg, valid_rows)
    if weights is not None:
        coefficients += weights
    losses = (errors * coefficients).sum(-1)  # [X, C']

    # A row counts if its class is present ('present') or it has a valid pixel (otherwise);
    # the mean over no counted rows is 0, so an all-ignored batch gives 0 with zero gradient.
    counted = fg.any(-1) if classes == "present" else valid_rows.any(-1).expand_as(losses)
    return ((losses * counted).sum(-1) / counted.sum(-1).clamp(min=1)).mean()


def lovasz_softmax(probas: Tensor, labels: Tensor, classes="present", per_image: bool = False,
                   ignore_index: int = 255) -> Tensor:
    """Multi-class Lovász-Softmax loss (Berman et al.).

    probas: [B, C, H, W] softmax outputs; labels: [B, H, W] ints in [0, C) or ignore_index.
    classes: 'present' (classes in the labels, per image if per_image), 'all', or a list.
    per_image: mean of per-image losses; else one loss per class over the whole batch.
    Returns a 0-dim tensor (float32, or float64 for float64 input).
    """
    return _lovasz(probas, labels, classes, per_image, ignore_index, use_distance=False)


def lovasz_pixiou(probas: Tensor, labels: Tensor, classes="present", per_image: bool = False,
                  ignore_index: int = 255, use_distance: bool = True) -> Tensor:
    """Lovász-PixIoU loss: Lovász-Softmax plus <w, m> with the frozen PixIoU distance weights.

    Same arguments and conventions as `lovasz_softmax`; w is computed from the argmax of the
    detached probas (PIXIOU_SPEC.md §2-3). use_distance=False gives exactly Lovász-Softmax.
    """
    return _lovasz(probas, labels, classes, per_image, ignore_index, use_distance)
