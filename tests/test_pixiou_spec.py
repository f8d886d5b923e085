"""docs/pixiou.md, "Properties and their tests": T1-T12 with their tolerances (fp32; fp64 in
brackets)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import lovasz_pixiou, lovasz_softmax, pixiou_geometry, pixiou_weights
from pipeline.losses.geometry import one_hot_masks
from pipeline.losses.lovasz import lovasz_coefficients_
from tests.reference import berman_lovasz_grad, berman_lovasz_softmax, pixiou_reference

MODES = [(per_image, classes) for per_image in (False, True) for classes in ("present", "all")]


def random_problem(seed, batch=2, classes=4, height=12, width=10, ignore_share=0.15,
                   dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, height, width, generator=generator, dtype=dtype) * 2
    labels = torch.randint(0, classes, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < ignore_share] = 255
    return logits.softmax(1), labels


def blob_problem(seed, height=12, width=12, classes=3):
    """Labels and one-hot predictions made of rectangles, so masks have real geometry."""
    rng = np.random.default_rng(seed)

    def paint():
        canvas = np.zeros((height, width), dtype=np.int64)
        for c in range(1, classes):
            r, q = rng.integers(0, height - 2), rng.integers(0, width - 2)
            canvas[r:r + rng.integers(2, 7), q:q + rng.integers(2, 7)] = c
        return canvas

    return torch.from_numpy(paint()), torch.from_numpy(paint())


def pixiou_table(labels, pred, num_classes):
    """Independent per-class (IoU, PixIoU, delta, |U|) of one image."""
    return [pixiou_reference((labels == c).numpy(), (pred == c).numpy())
            for c in range(num_classes)]


@pytest.mark.parametrize("per_image,classes", MODES + [(False, [0, 2]), (True, [1])])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_t1_without_distance_equals_lovasz_softmax(per_image, classes, dtype, tol):
    """Against Berman's reference (tests/reference.py), which shares no code with ours."""
    for seed in range(3):
        probas, labels = random_problem(seed, dtype=dtype)
        berman = berman_lovasz_softmax(probas, labels, classes, per_image)
        pix = lovasz_pixiou(probas, labels, classes, per_image, use_distance=False)
        assert abs(float(berman - pix)) <= tol
        plain = lovasz_softmax(probas, labels, classes, per_image)
        with_distance = lovasz_pixiou(probas, labels, classes, per_image)
        assert float(with_distance) > float(plain)  # the distance term is really there


@pytest.mark.parametrize("seed", range(6))
def test_t2_one_hot_loss_is_mean_of_one_minus_pixiou(seed):
    labels, pred = blob_problem(seed)
    num_classes = 3
    probas = F.one_hot(pred, num_classes).permute(2, 0, 1)[None].float()
    table = pixiou_table(labels, pred, num_classes)
    present = [c for c in range(num_classes) if (labels == c).any()]
    expected = np.mean([1 - table[c][1] for c in present])
    for per_image in (False, True):
        loss = lovasz_pixiou(probas, labels[None], "present", per_image)
        assert abs(float(loss) - expected) <= 1e-6
    assert any(table[c][1] < table[c][0] - 1e-3 for c in present)  # distances matter here


@pytest.mark.parametrize("seed", range(4))
def test_t3_gradient_is_jaccard_derivative_plus_weight(seed):
    probas, labels = random_problem(seed, batch=1, ignore_share=0.0, dtype=torch.float64)
    probas.requires_grad_(True)
    loss = lovasz_pixiou(probas, labels, "present", per_image=True)
    (grad,) = torch.autograd.grad(loss, probas)

    num_classes = probas.shape[1]
    pred = probas.detach().argmax(1)[0]
    table = pixiou_table(labels[0], pred, num_classes)
    present = [c for c in range(num_classes) if (labels[0] == c).any()]
    expected = torch.zeros_like(probas[0])
    for c in present:
        fg = (labels[0] == c).double().flatten()
        errors = (fg - probas[0, c].detach().flatten()).abs()
        order = torch.argsort(errors, descending=True)
        g = torch.zeros_like(errors)
        g[order] = berman_lovasz_grad(fg[order])
        _, _, delta, n_union = table[c]
        w = torch.from_numpy(delta).flatten() / n_union
        sign = torch.where(fg.bool(), -1.0, 1.0).double()
        expected[c] = (sign * (g + w) / len(present)).reshape(probas.shape[2:])
    assert torch.allclose(grad[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("per_image,classes", MODES)
def test_t4_pixiou_gradient_dominates_lovasz_in_the_sign_direction(per_image, classes):
    for seed in range(3):
        probas, labels = random_problem(seed)
        probas.requires_grad_(True)
        (g_pix,) = torch.autograd.grad(lovasz_pixiou(probas, labels, classes, per_image), probas)
        (g_ls,) = torch.autograd.grad(lovasz_softmax(probas, labels, classes, per_image), probas)
        sign = torch.where(F.one_hot(labels.clamp(max=3), 4).permute(0, 3, 1, 2).bool(), -1.0, 1.0)
        assert (sign * (g_pix - g_ls)).min() >= -1e-7
        assert (sign * (g_pix - g_ls)).max() > 1e-4


def per_image_scores(gt, pred):
    geometry = pixiou_geometry(gt, pred, torch.float64)
    delta = geometry.delta.sum((2, 3))
    union = geometry.union
    iou = torch.where(union > 0, geometry.intersection / union.clamp(min=1), 1.0)
    pixiou = torch.where(union > 0, (geometry.intersection - delta) / union.clamp(min=1), 1.0)
    return iou, pixiou


def test_t5_bounds_and_equality_case():
    rng = np.random.default_rng(5)
    gt = torch.from_numpy(rng.random((400, 1, 8, 8)) < rng.random((400, 1, 1, 1)))
    pred = torch.from_numpy(rng.random((400, 1, 8, 8)) < rng.random((400, 1, 1, 1)))
    pred[:50] = gt[:50]  # the equality case
    iou, pixiou = per_image_scores(gt, pred)
    assert (pixiou <= iou + 1e-7).all()
    assert (pixiou > 2 * iou - 1 - 1e-7).all()
    equal = (gt == pred).flatten(1).all(1)
    assert torch.equal((pixiou[:, 0] == 1), equal)
    assert equal[:50].all() and not equal[50:].all()


@pytest.mark.parametrize("k", [2, 3])
def test_t6_scale_invariance_and_padding(k):
    for seed in range(10):
        labels, pred = blob_problem(seed)
        valid = torch.ones_like(labels, dtype=torch.bool)[None]
        gt, pr = one_hot_masks(labels[None], 3, valid), one_hot_masks(pred[None], 3, valid)
        iou, pixiou = per_image_scores(gt, pr)
        up = lambda m: m.repeat_interleave(k, 2).repeat_interleave(k, 3)  # noqa: E731
        iou_k, pixiou_k = per_image_scores(up(gt), up(pr))
        for c in range(3):
            union = (gt[0, c] | pr[0, c]).nonzero()
            if len(union) == 0:
                continue
            extent = union.max(0).values - union.min(0).values + 1
            diagonal = math.hypot(*extent.tolist())
            bound = (1 - iou[0, c]) * (k - 1) / (math.sqrt(2) * k * diagonal)
            assert abs(float(iou_k[0, c] - iou[0, c])) <= 1e-12
            assert abs(float(pixiou_k[0, c] - pixiou[0, c])) <= float(bound) + 1e-6
        pad = lambda m: F.pad(m, (3, 5, 2, 4))  # noqa: E731
        _, pixiou_pad = per_image_scores(pad(gt), pad(pr))
        assert torch.allclose(pixiou_pad, pixiou, atol=1e-6, rtol=0)


def no_overlap_case(shift):
    """Spec §5: 16x16, G 3x3 at (2, 2); p_c = 0.85 on a 3x3 square at (2, 2+shift), 0.10 else."""
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 2:5, 2:5] = 1
    p = torch.full((16, 16), 0.10)
    p[2:5, 2 + shift:5 + shift] = 0.85
    probas = torch.stack([1 - p, p])[None].requires_grad_(True)
    return probas, labels


def test_t7_no_overlap_gradients():
    fp_grad_ls, fp_grad_pix, hard_pixiou, losses = [], [], [], []
    for shift in range(3, 12):
        probas, labels = no_overlap_case(shift)
        fp = (slice(2, 5), slice(2 + shift, 5 + shift))
        (g_ls,) = torch.autograd.grad(lovasz_softmax(probas, labels, [1]), probas)
        loss = lovasz_pixiou(probas, labels, [1])
        (g_pix,) = torch.autograd.grad(loss, probas)
        fp_grad_ls.append(g_ls[0, 1][fp])
        fp_grad_pix.append(float(g_pix[0, 1][fp].mean()))
        losses.append(float(loss))
        pred = probas.detach().argmax(1)[0]
        hard_pixiou.append(pixiou_reference((labels[0] == 1).numpy(), (pred == 1).numpy())[1])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in fp_grad_ls)
    assert fp_grad_pix[0] > 0 and all(np.diff(fp_grad_pix) > 0)
    assert all(np.diff(hard_pixiou) < 0)
    # The numbers the spec reports for this setup (§5): loss 1.306 -> 1.574, grad .026 -> .043.
    assert (round(losses[0], 3), round(losses[-1], 3)) == (1.306, 1.574)
    assert (round(fp_grad_pix[0], 3), round(fp_grad_pix[-1], 3)) == (0.026, 0.043)


def frozen_set_function(seed):
    """L(M) = |M|/|G∪M| + Σ_M w on a 4x4 image, w frozen at a random prediction P0."""
    rng = np.random.default_rng(seed)
    gt = rng.random((4, 4)) < 0.4
    gt[1, 1] = True
    pred = rng.random((4, 4)) < 0.4
    masks = lambda m: torch.from_numpy(m)[None, None]  # noqa: E731
    w = pixiou_weights(masks(gt), masks(pred), per_image=True, dtype=torch.float64)
    w = w.flatten().numpy()
    subsets = (np.arange(2**16)[:, None] >> np.arange(16)) & 1  # [65536, 16]
    g = gt.flatten().astype(np.int64)
    union = g.sum() + (subsets * (1 - g)).sum(1)
    return subsets @ np.ones(16) / union + subsets @ w, w, gt, pred


def worst_violations(values: np.ndarray, pixels: int) -> tuple[float, float]:
    """(min over S, i of L(S+i) − L(S); min over S, i, j of L(S+i) + L(S+j) − L(S) − L(S+i+j))
    of a set function given on all 2^pixels subsets (bit i = pixel i): both ≥ 0 iff L is
    non-decreasing and submodular."""
    sets = np.arange(2 ** pixels)
    increment = submodular = np.inf
    for i in range(pixels):
        outside_i = sets[(sets >> i) & 1 == 0]
        increment = min(increment, (values[outside_i | (1 << i)] - values[outside_i]).min())
        for j in range(i + 1, pixels):
            s = outside_i[(outside_i >> j) & 1 == 0]
            gain = (values[s | (1 << i)] + values[s | (1 << j)] - values[s]
                    - values[s | (1 << i) | (1 << j)])
            submodular = min(submodular, gain.min())
    return float(increment), float(submodular)


@pytest.mark.parametrize("seed", range(3))
def test_t8_frozen_loss_is_submodular_and_monotone(seed):
    values, w, _, _ = frozen_set_function(seed)
    assert w.max() > 0
    increment, submodular = worst_violations(values, 16)
    assert increment >= -1e-12 and submodular >= -1e-12


def test_t8_the_check_finds_a_loss_that_is_not_submodular():
    """The spec's counterexample (§5, candidate A: δ over |G∪M| instead of frozen weights):
    G = {g} with δ_g = 0.6, δ = 0 on two other pixels p1, p2. The same check must fail."""
    delta = np.array([0.6, 0.0, 0.0])  # pixels g, p1, p2; G = {g}
    subsets = (np.arange(8)[:, None] >> np.arange(3)) & 1
    union = 1 + subsets[:, 1:].sum(1)  # |G ∪ M|
    candidate_a = (subsets.sum(1) + subsets @ delta) / union
    increment, submodular = worst_violations(candidate_a, 3)
    assert submodular < -0.1 and increment < -0.1  # 2.6 < 2.8 and 1.6 > 1.3, as in the spec
    frozen = subsets.sum(1) / union + subsets @ (delta / 1)  # C1: w frozen at |U₀| = 1
    assert min(worst_violations(frozen, 3)) >= -1e-12


@pytest.mark.parametrize("seed", range(3))
def test_t9_extension_matches_set_function_at_binary_points(seed):
    values, w, gt, _ = frozen_set_function(seed)
    rng = np.random.default_rng(100 + seed)
    fg = torch.from_numpy(gt.flatten())
    valid = torch.ones(16, dtype=torch.bool)
    for subset in rng.integers(1, 2**16, size=20):
        m = torch.from_numpy(((subset >> np.arange(16)) & 1).astype(np.float64))
        for _ in range(5):  # different tie orders: permute the pixels
            perm = torch.from_numpy(rng.permutation(16))
            coefficients = lovasz_coefficients_(m[perm].clone(), fg[perm], valid)
            surrogate = float(m[perm] @ (coefficients + torch.from_numpy(w)[perm]))
            assert abs(surrogate - values[subset]) <= 1e-12


@pytest.mark.parametrize("per_image,classes", MODES)
def test_t10_ignored_pixels_have_no_influence(per_image, classes):
    probas, labels = random_problem(7, ignore_share=0.3)
    ignored = (labels == 255).unsqueeze(1).expand_as(probas)
    changed = probas.clone()
    changed[ignored] = torch.rand(int(ignored.sum()))
    base = lovasz_pixiou(probas, labels, classes, per_image)
    assert abs(float(lovasz_pixiou(changed, labels, classes, per_image) - base)) <= 1e-7
    probas.requires_grad_(True)
    (grad,) = torch.autograd.grad(lovasz_pixiou(probas, labels, classes, per_image), probas)
    assert torch.equal(grad[ignored], torch.zeros(int(ignored.sum())))
    assert grad[~ignored].abs().max() > 0


@pytest.mark.parametrize("classes", ["present", "all"])
def test_t11_per_image_is_mean_and_batch_mode_sums_unions(classes):
    probas, labels = random_problem(11, batch=3)
    per_image = lovasz_pixiou(probas, labels, classes, per_image=True)
    singles = [lovasz_pixiou(probas[b:b + 1], labels[b:b + 1], classes, True) for b in range(3)]
    assert abs(float(per_image - torch.stack(singles).mean())) <= 1e-6

    problems = [blob_problem(seed) for seed in (1, 2, 3)]
    labels = torch.stack([y for y, _ in problems])
    pred = torch.stack([p for _, p in problems])
    probas = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    tables = [pixiou_table(labels[b], pred[b], 3) for b in range(3)]
    for c in range(3):
        intersection = sum(int(((labels[b] == c) & (pred[b] == c)).sum()) for b in range(3))
        union = sum(tables[b][c][3] for b in range(3))
        delta = sum(tables[b][c][2].sum() for b in range(3) if (labels[b] == c).any())
        expected = 1 - (intersection / union - delta / union)
        assert abs(float(lovasz_pixiou(probas, labels, [c])) - expected) <= 1e-6


def test_t12_surrogate_bounds_and_detached_weights():
    rng = np.random.default_rng(12)
    for _ in range(200):
        gt = torch.from_numpy(rng.random((1, 1, 6, 6)) < rng.random())
        pred = torch.from_numpy(rng.random((1, 1, 6, 6)) < rng.random())
        w = pixiou_weights(gt, pred, per_image=True, dtype=torch.float64).flatten()
        m = torch.from_numpy(rng.random(36))
        fg = gt.flatten()
        coefficients = lovasz_coefficients_(m.clone(), fg, torch.ones(36, dtype=torch.bool))
        value = float(m @ (coefficients + w))
        assert 0 <= value <= 2
    # w is frozen (no gradient flows through it): T3 checks that the autograd gradient is
    # exactly s·(g + w)/|classes|, with no term from w's dependence on the prediction.

