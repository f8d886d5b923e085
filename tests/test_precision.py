"""float32 against float64 at paper scale: the Lovász gradients stay exact to 1e-5 (relative L2
norm) at 4M pixels per row, per image and per batch, for both losses.

The errors are built distinct and exactly representable in both precisions, so both sort the
pixels the same way and any difference is the arithmetic of the gradient itself. Taken as the
difference of neighbouring cumulative Jaccard values (Berman's `lovasz_grad`), the float32
gradient is off by ~10% here; in closed form from integer counts it is off by ~1e-7.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.losses import lovasz_pixiou, lovasz_softmax

PIXELS = 2 ** 22  # 4,194,304 pixels in every (image or batch, class) row
CLASSES = 3


def paper_scale_inputs(per_image: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """probas [B, C, H, W] float64 (exact in float32) and labels, 5% ignored."""
    batch, side = (1, 2048) if per_image else (4, 1024)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (batch, side, side), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.05] = 255
    probas = torch.empty(batch, CLASSES, side, side, dtype=torch.float64)
    for c in range(CLASSES):
        # distinct odd multiples of 2^-23 as the errors m of class c: no ties, exact in float32
        m = (2 * torch.randperm(PIXELS, generator=generator).double() + 1) / 2 ** 23
        m = m.view(batch, side, side)
        probas[:, c] = torch.where(labels == c, 1 - m, m)  # m = 1 - p on the class, p elsewhere
    return probas, labels


def gradient(loss_fn, probas, labels, per_image):
    x = probas.detach().requires_grad_(True)
    loss = loss_fn(x, labels, per_image=per_image)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per_image"])
@pytest.mark.parametrize("loss_fn", [lovasz_softmax, lovasz_pixiou])
def test_float32_gradient_equals_float64_at_4m_pixels_per_row(loss_fn, per_image, device):
    probas, labels = (t.to(device) for t in paper_scale_inputs(per_image))
    loss64, grad64 = gradient(loss_fn, probas, labels, per_image)
    loss32, grad32 = gradient(loss_fn, probas.float(), labels, per_image)
    assert loss32.dtype == torch.float32 and grad64.dtype == torch.float64
    relative = float((grad32.double() - grad64).norm() / grad64.norm())
    assert relative < 1e-5, f"relative L2 error of the float32 gradient: {relative:.3g}"
    assert float(loss32) == pytest.approx(float(loss64), rel=1e-5)
