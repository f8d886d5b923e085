"""Lovász-Softmax (Berman, Rannen Triki & Blaschko, CVPR 2018) and Lovász-PixIoU (Yu et al.,
ICML 2021; our reconstruction in docs/pixiou.md), vectorised over every (image, class) row.

For one class c over a set of pixels, the errors are m_i = 1 - f_i(c) if y_i = c, else f_i(c).
With π sorting m in decreasing order and g the discrete derivative of the Jaccard loss along that
order (`jaccard_gradient`, in closed form), the Lovász extension of the Jaccard loss is

    L̄(m) = Σ_k m_{π_k} g_k = <m, g∘π⁻¹>,

and Lovász-PixIoU adds the modular term <w, m> of the frozen distance weights w:

    L̄_pix(m) = <m, g∘π⁻¹ + w>.

Both are piecewise linear in m, so their gradient is that coefficient vector itself. The kernel
computes it without autograd, from one batched sort over all rows, and a small autograd Function
keeps only that vector for the backward pass: no graph through the sort, and peak memory close
to the sort's own.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .geometry import check_labels, one_hot_masks, pixiou_weights

#: Sort key of ignored pixels: below every error in [0, 1], so they sort after all valid pixels
#: and leave the Jaccard derivative of the valid ones untouched.
_IGNORED_KEY = -1.0
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
#: How far outside [0, 1] probas may stray by rounding (a half-precision softmax) before they are
#: taken for something else; within it they are clipped.
PROBA_TOLERANCE = 1e-3


def jaccard_gradient(gt_sorted: Tensor, dtype: torch.dtype = torch.float32,
                     out: Tensor | None = None) -> Tensor:
    """g_k = J_k − J_{k−1}, the discrete derivative of the Jaccard loss along the sorted pixels
    (Berman et al., Algorithm 1: `lovasz_grad`), in closed form from exact integer counts.

    gt_sorted: [..., N] bool ground truth of each row, in decreasing order of error.
    Returns [..., N] of `dtype` (in `out` if given).

    With |G| the class's pixels, c_k = Σ_{i≤k} 1[y_{π_i} = c], and after the first k pixels

        I_k = |G| − c_k,   U_k = |G| + k − c_k,   J_k = 1 − I_k / U_k   (J_0 = 0),

    a pixel of the class leaves U unchanged and lowers I by one, any other pixel raises U by one
    and leaves I, so

        g_k = I_{k−1}/U_{k−1} − I_k/U_k = 1 / U_k                 if y_{π_k} = c,
                                        = I_k / (U_k · U_{k−1})   otherwise,

    and when the class is empty (|G| = 0, so U_0 = 0) Berman's J_k = 1 for every k ≥ 1 gives
    g_1 = 1 and g_k = 0 after. Every g_k is a product of exact counts: float32 rounds each one
    once, where J_k − J_{k−1} of two values close to 1 would cancel their leading digits (a
    relative error of ~10% at 4M pixels per row in float32).
    """
    n = gt_sorted.shape[-1]
    # Integer counts: exact to 2^31 (int32) or 2^63 pixels per row.
    count = torch.int32 if n < 2 ** 31 and dtype != torch.float64 else torch.int64
    rank = torch.arange(1, n + 1, dtype=count, device=gt_sorted.device)
    counts = torch.empty(gt_sorted.shape, dtype=count, device=gt_sorted.device)
    counts.copy_(gt_sorted).cumsum_(-1)  # c_k
    gts = counts[..., -1:].clone()
    counts.neg_().add_(rank).add_(gts)  # U_k = |G| + k − c_k ≥ k ≥ 1
    g = torch.empty(gt_sorted.shape, dtype=dtype, device=gt_sorted.device) if out is None else out
    g.copy_(counts)  # U_k
    counts.sub_(rank)  # I_k = U_k − k
    if counts.element_size() == g.element_size():
        # I_k as floats in the counts' own buffer: an element-wise copy onto the same memory
        # reads each element before writing it. Two row-sized buffers in all, like the
        # difference form's.
        inter = counts.view(dtype)
        inter.copy_(counts)
    else:
        inter = counts.to(dtype)
    inter.div_(g)  # I_k / U_k
    inter.div_(g.sub_(1.0))  # / U_{k−1}: at any other pixel U_{k−1} = U_k − 1
    g.add_(1.0).reciprocal_()  # 1 / U_k
    torch.where(gt_sorted, g, inter, out=g)
    g[..., :1].masked_fill_(gts == 0, 1.0)  # the empty class (its U_0 = 0 divided by zero)
    return g


@torch.no_grad()
def lovasz_coefficients_(errors: Tensor, fg: Tensor, valid: Tensor) -> Tensor:
    """Gradient g∘π⁻¹ of the Lovász-Jaccard extension of every row. Overwrites `errors`.

    errors: [..., N] pixel errors m in [0, 1]; used as the sort buffer (destroyed)
    fg:     [..., N] bool, pixels of the row's class
    valid:  bool, broadcastable to errors; False on ignored pixels (they get coefficient 0)
    Returns [..., N] coefficients of errors' dtype, so that L̄(m) = <m, coefficients>.
    """
    # Rounding may leave m a hair below 0, where the int-view sort would misorder it.
    key = errors.clamp_(min=0.0).masked_fill_(~valid, _IGNORED_KEY)  # ignored pixels sort last
    order = torch.empty(key.shape, dtype=torch.long, device=key.device)
    # The one batched sort, in place. Non-negative IEEE floats order like their bit patterns
    # read as signed ints, and the one negative key (ignored pixels) reads as a negative int,
    # so sorting the int view gives the same order; torch's CPU sort is ~1.6x faster on ints.
    bits = key.view(_INT_VIEW[key.dtype]) if key.dtype in _INT_VIEW else key
    torch.sort(bits, dim=-1, descending=True, out=(bits, order))
    # The sorted keys are spent once the ground truth is in their order: g takes their buffer.
    g = jaccard_gradient(fg.gather(-1, order), key.dtype, out=key)
    g.masked_fill_(torch.arange(g.shape[-1], device=g.device) >= valid.sum(-1, keepdim=True), 0)
    return torch.empty_like(g).scatter_(-1, order, g)  # g∘π⁻¹


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
    # One pass for both checks: NaN or Inf make the extremes non-finite.
    low, high = (float(x) for x in torch.aminmax(probas.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("probas contain NaN or Inf (non-finite logits?)")
    if low < -PROBA_TOLERANCE or high > 1 + PROBA_TOLERANCE:
        raise ValueError(f"probas must be probabilities in [0, 1] (softmax outputs), got values "
                         f"in [{low:.4g}, {high:.4g}]: logits passed by mistake?")
    check_labels(labels, num_classes, ignore_index)


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


class _RowLayout:
    """Rows [X, C, N] of the kernel: X = B images of N = H*W pixels (per image), or X = 1 and
    N = B*H*W (batch). `pixels` views a [B, C, ...] tensor, and `rows` views a row tensor, in
    the same pixel order ([B, C, HW] or [C, B, HW]), so one is written into the other without
    a transposed copy."""

    def __init__(self, shape: torch.Size, per_image: bool):
        self.batch, self.classes = shape[:2]
        self.image = shape[2:]
        self.per_image = per_image

    @property
    def shape(self) -> tuple[int, ...]:
        n = self.image.numel()
        return (self.batch, self.classes, n) if self.per_image else (1, self.classes,
                                                                      self.batch * n)

    def pixels(self, t: Tensor) -> Tensor:
        t = t.reshape(t.shape[0], t.shape[1], -1)
        return t if self.per_image else t.transpose(0, 1)

    def rows(self, t: Tensor) -> Tensor:
        return t.view(self.batch, self.classes, -1) if self.per_image else t.view(
            self.classes, self.batch, -1)

    def images(self, t: Tensor) -> Tensor:
        """A row tensor seen as [B, C, H, W] (per image) or [C, B, H, W] (batch)."""
        return self.rows(t).unflatten(-1, self.image)

    def errors(self, probas: Tensor, fg: Tensor) -> Tensor:
        """m = |1[y=c] - f(c)| in row layout, a new buffer."""
        errors = torch.empty(self.shape, dtype=probas.dtype, device=probas.device)
        p = self.pixels(probas)
        torch.where(self.rows(fg), 1.0 - p, p, out=self.rows(errors))
        return errors


class _LovaszExtension(torch.autograd.Function):
    """Row losses <m, g∘π⁻¹ + w>; backward uses the saved coefficient vector, no graph."""

    @staticmethod
    def forward(ctx, probas, fg, valid, layout, modular_weights):
        # probas [B, C, H, W]; fg [X, C, N] bool rows; valid [X, 1, N]; modular_weights: None or
        # a callable giving w in row layout, called once the sort's buffers are freed.
        coefficients = lovasz_coefficients_(layout.errors(probas, fg), fg, valid)
        if modular_weights is not None:
            coefficients += modular_weights()
        # <m, coefficients>, m recomputed now that the sort's buffers are freed. The terms are
        # non-negative (no cancellation), and torch's sum reduces them pairwise, where a
        # matmul-style dot product would accumulate 4M float32 terms one after the other.
        values = layout.errors(probas, fg).mul_(coefficients).sum(-1)
        # ∂m/∂f(c) is -1 on the class and +1 elsewhere: save the gradient w.r.t. probas.
        torch.where(fg, coefficients.neg(), coefficients, out=coefficients)
        ctx.save_for_backward(coefficients)
        ctx.layout = layout
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values):
        (signed_coefficients,) = ctx.saved_tensors
        images = ctx.layout.images(signed_coefficients * grad_values[..., None])
        return (images if ctx.layout.per_image else images.transpose(0, 1)), None, None, None, None


def _lovasz(probas: Tensor, labels: Tensor, classes, per_image: bool, ignore_index: int,
            use_distance: bool) -> Tensor:
    check_inputs(probas, labels, ignore_index)
    num_classes = probas.shape[1]
    keep = _class_index(classes, num_classes)
    if probas.dtype != torch.float64:
        probas = probas.float()  # fp16/bf16 are accumulated in fp32
    valid = labels != ignore_index  # [B, H, W]
    # Class masks built straight in row layout: [B, C, HW] or [1, C, B*HW].
    rows = probas.shape[0] if per_image else 1
    valid_rows = valid.reshape(rows, -1)
    fg = one_hot_masks(labels.reshape(rows, -1), num_classes, valid_rows)
    predicted = probas.detach().max(1).indices if use_distance else None  # argmax, first on ties
    if classes == "present":
        # Rows of classes absent from the whole batch count for nothing: leave them out of the
        # sort (the kernel's cost) rather than sort and drop them. The kept rows are unchanged.
        present = fg.any(-1).any(0)
        if present.any() and not present.all():  # none present: the full path gives 0
            keep = present.nonzero().squeeze(1)

    if keep is not None:
        probas, fg = probas[:, keep], fg[:, keep]
    layout = _RowLayout(probas.shape, per_image)

    def modular_weights() -> Tensor:
        """PixIoU's w = δ/|U| in row layout; δ is per (image, class) geometry."""
        pred = one_hot_masks(predicted.reshape(rows, -1), num_classes, valid_rows)
        if keep is not None:
            pred = pred[:, keep]
        weights = pixiou_weights(layout.images(fg), layout.images(pred), per_image,
                                 probas.dtype, image_dim=0 if per_image else 1)
        return weights.view(fg.shape)

    losses = _LovaszExtension.apply(probas, fg, valid_rows.unsqueeze(1), layout,
                                    modular_weights if use_distance else None)  # [X, C']
    # A row counts if its class is present ('present') or it has a valid pixel (otherwise).
    # Per image, an image with no counted row (all its pixels ignored) is left out of the mean;
    # the mean over nothing is 0, so an all-ignored batch gives 0 with zero gradient.
    counted = fg.any(-1) if classes == "present" else valid_rows.any(-1, keepdim=True).expand_as(
        losses)
    per_row = (losses * counted).sum(-1) / counted.sum(-1).clamp(min=1)  # [X]
    return per_row.sum() / counted.any(-1).sum().clamp(min=1)


def lovasz_softmax(probas: Tensor, labels: Tensor, classes="present", per_image: bool = False,
                   ignore_index: int = 255) -> Tensor:
    """Multi-class Lovász-Softmax loss (Berman et al.).

    probas: [B, C, H, W] softmax outputs in [0, 1]; labels: [B, H, W] ints in [0, C) or
        ignore_index.
    classes: 'present' (classes in the labels, per image if per_image), 'all', or a list.
    per_image: mean of per-image losses over the images with a valid pixel; else one loss per
        class over the whole batch.
    Returns a 0-dim tensor (float32, or float64 for float64 input).
    """
    return _lovasz(probas, labels, classes, per_image, ignore_index, use_distance=False)


def lovasz_pixiou(probas: Tensor, labels: Tensor, classes="present", per_image: bool = False,
                  ignore_index: int = 255, use_distance: bool = True) -> Tensor:
    """Lovász-PixIoU loss: Lovász-Softmax plus <w, m> with the frozen PixIoU distance weights.

    Same arguments and conventions as `lovasz_softmax`; w is computed from the argmax of the
    detached probas (docs/pixiou.md: "The learning loss", "Conventions").
    use_distance=False gives exactly Lovász-Softmax.
    """
    return _lovasz(probas, labels, classes, per_image, ignore_index, use_distance)
