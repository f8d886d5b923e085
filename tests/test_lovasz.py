"""Lovász-Softmax: Berman's semantics, mmseg's LovaszLoss equality, edge cases, bad input."""
from __future__ import annotations

import pytest
import torch
from mmseg.models.losses import LovaszLoss

from pipeline.losses import lovasz_pixiou, lovasz_softmax
from tests.reference import berman_lovasz_softmax

MODES = [(per_image, classes) for per_image in (False, True) for classes in ("present", "all")]


def random_logits(seed, shape=(3, 6, 14, 11), ignore_share=0.2, num_labels=None):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=generator) * 3).requires_grad_(True)
    batch, classes, height, width = shape
    labels = torch.randint(0, num_labels or classes, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < ignore_share] = 255
    return logits, labels


def value_and_grad(fn, logits, *args):
    loss = fn(logits.softmax(1), *args)
    (grad,) = torch.autograd.grad(loss, logits)
    return float(loss), grad


@pytest.mark.parametrize("per_image,classes", MODES + [(False, [0, 4]), (True, [2])])
def test_matches_berman_reference(per_image, classes):
    for seed in range(4):
        # num_labels < classes: some classes absent, so 'present' and 'all' differ
        logits, labels = random_logits(seed, num_labels=4)
        ours, g_ours = value_and_grad(lovasz_softmax, logits, labels, classes, per_image)
        ref, g_ref = value_and_grad(berman_lovasz_softmax, logits, labels, classes, per_image)
        assert ours == pytest.approx(ref, abs=1e-6)
        assert torch.allclose(g_ours, g_ref, atol=1e-7, rtol=0)


@pytest.mark.parametrize("per_image,classes", MODES)
def test_matches_mmseg_lovasz_loss(per_image, classes):
    # mmseg's LovaszLoss takes logits, and insists on reduction='none' in batch mode
    mmseg_loss = LovaszLoss(loss_type="multi_class", classes=classes, per_image=per_image,
                            reduction="mean" if per_image else "none")
    for seed in range(3):
        logits, labels = random_logits(seed, shape=(2, 5, 16, 16), num_labels=4)
        ours, g_ours = value_and_grad(lovasz_softmax, logits, labels, classes, per_image)
        theirs = mmseg_loss(logits, labels, ignore_index=255)
        (g_theirs,) = torch.autograd.grad(theirs, logits)
        assert ours == pytest.approx(float(theirs), abs=1e-5)
        assert torch.allclose(g_ours, g_theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_image,classes", MODES)
@pytest.mark.parametrize("loss_fn", [lovasz_softmax, lovasz_pixiou])
def test_all_ignored_batch_gives_zero_loss_and_gradient(loss_fn, per_image, classes):
    logits, labels = random_logits(0, ignore_share=1.0)
    loss, grad = value_and_grad(loss_fn, logits, labels, classes, per_image)
    assert loss == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_present_skips_absent_classes_per_image():
    """Image 0 holds only class 0, image 1 only class 1: per image, each averages one class."""
    logits, _ = random_logits(1, shape=(2, 3, 8, 8), ignore_share=0.0)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[1] = 1
    per_image = lovasz_softmax(logits.softmax(1), labels, "present", per_image=True)
    single = [lovasz_softmax(logits[b:b + 1].softmax(1), labels[b:b + 1], [b]) for b in range(2)]
    assert float(per_image) == pytest.approx(float(sum(single) / 2), abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_accumulated_in_fp32(dtype):
    logits, labels = random_logits(2)
    reference = lovasz_pixiou(logits.softmax(1).to(dtype).float(), labels)
    loss = lovasz_pixiou(logits.softmax(1).to(dtype), labels)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(reference), abs=1e-6)


@pytest.mark.parametrize("loss_fn", [lovasz_softmax, lovasz_pixiou])
@pytest.mark.parametrize("probas,labels,message", [
    (torch.rand(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), "labels must be"),
    (torch.rand(3, 4, 4), torch.zeros(3, 4, dtype=torch.long), r"\[B, C, H, W\]"),
    (torch.rand(1, 3, 2, 2), torch.tensor([[[0, 3], [1, 255]]]), r"outside \[0, 3\).*\[3\]"),
    (torch.rand(1, 3, 2, 2), torch.tensor([[[0, -1], [1, 2]]]), r"outside \[0, 3\).*\[-1\]"),
    (torch.full((1, 3, 2, 2), float("nan")), torch.zeros(1, 2, 2, dtype=torch.long), "non-finite"),
    (torch.randn(1, 3, 2, 2) * 4, torch.zeros(1, 2, 2, dtype=torch.long),
     r"probabilities in \[0, 1\].*logits passed by mistake"),
    (torch.full((1, 3, 2, 2), 1.01), torch.zeros(1, 2, 2, dtype=torch.long), r"\[1.01, 1.01\]"),
    (torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 2), "integer class indices"),
])
def test_bad_input_raises_a_clear_value_error(loss_fn, probas, labels, message):
    with pytest.raises(ValueError, match=message):
        loss_fn(probas, labels)


@pytest.mark.parametrize("classes", ["some", [], [7]])
def test_bad_classes_argument(classes):
    logits, labels = random_logits(0)
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax(logits.softmax(1), labels, classes)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("loss_fn", [lovasz_softmax, lovasz_pixiou])
def test_an_all_ignored_image_is_left_out_of_the_per_image_mean(loss_fn, classes):
    logits, labels = random_logits(3, shape=(2, 4, 8, 8), ignore_share=0.1)
    labels[1] = 255  # image 1: every pixel ignored
    both = loss_fn(logits.softmax(1), labels, classes, per_image=True)
    first = loss_fn(logits[:1].softmax(1), labels[:1], classes, per_image=True)
    assert float(first) > 0
    assert float(both) == pytest.approx(float(first), abs=1e-7)  # not first / 2


def test_probas_off_0_1_by_rounding_are_accepted():
    logits, labels = random_logits(4)
    probas = logits.softmax(1).detach()
    nudged = probas.clone()
    nudged[0, 0, 0, 0], nudged[0, 1, 0, 0] = -1e-6, 1 + 1e-6
    assert torch.isfinite(lovasz_pixiou(nudged, labels))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_closed_form_jaccard_gradient_equals_berman_lovasz_grad(dtype, tol):
    """g_k = 1/U_k on the class, I_k/(U_k U_{k-1}) elsewhere, against Berman's J_k − J_{k−1}:
    random rows, an empty class, a class that fills the row, and one-pixel rows."""
    from pipeline.losses import jaccard_gradient
    from tests.reference import berman_lovasz_grad

    generator = torch.Generator().manual_seed(0)
    rows = [torch.rand(n, generator=generator) < share
            for n in (1, 2, 7, 50, 1000) for share in (0.0, 0.1, 0.5, 1.0)]
    for gt_sorted in rows:
        ours = jaccard_gradient(gt_sorted[None], dtype)[0]
        reference = berman_lovasz_grad(gt_sorted.double())
        assert torch.allclose(ours.double(), reference, atol=tol, rtol=0), gt_sorted
