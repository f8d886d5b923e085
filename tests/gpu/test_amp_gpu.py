"""On a CUDA GPU: both Lovász losses under fp16 and bf16 autocast, against fp32, to 1e-3 in
value and gradient (the CPU bf16 check is tests/test_amp.py). Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from tests.test_amp import IDS, LOSSES, scores, value_and_grad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_the_lovasz_losses_under_cuda_autocast_match_fp32(loss, dtype):
    for seed in range(3):
        logits, labels = scores(seed, shape=(4, 21, 128, 128))
        logits, labels = logits.cuda(), labels.cuda()
        half = logits.to(dtype)  # as a model under autocast hands them
        ref_value, ref_grad = value_and_grad(loss, half.float(), labels)
        with torch.autocast("cuda", dtype=dtype):
            value, grad = value_and_grad(loss, half, labels)
        assert abs(float(value) - float(ref_value)) <= 1e-3
        assert float((grad - ref_grad).abs().max()) <= 1e-3
