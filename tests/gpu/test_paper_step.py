"""On a CUDA GPU: the first steps of a paper-scale trial. Skipped without one (CI has none).

One training step and one evaluation of the paper's DeepLabV3+ R-101-D8 VOC config with each
study loss, alone and with CE, under the default params (train.deterministic included). This is
where a GPU trial would crash at its first backward pass if determinism were armed strictly
(bilinear upsampling and adaptive pooling have no deterministic CUDA backward).

The ImageNet backbone is left out (no network on a test machine; `pretrained=None` in a leaf
over the paper config): the step, the loss and the determinism settings are what is tested.
The data are the generated VOC layout at the paper's 512x512.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.train import Placement, RunSpec, load_train_params, run
from tests.conftest import ROOT, build_tiny_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PAPER_VOC = ROOT / "mmseg_configs" / "deeplabv3plus_r101-d8_4xb4-20k_voc12aug-512x512.py"


@pytest.fixture(scope="module")
def voc_512(tmp_path_factory) -> Path:
    """The generated VOC-aug layout at 512x512, where the paper config looks (data/voc)."""
    root = build_tiny_data(tmp_path_factory.mktemp("voc_512"), train=4, val=2, height=512,
                           width=512)
    (root / "voc").symlink_to(root / "synthetic_voc")
    return root


@pytest.fixture(scope="module")
def paper_leaf(tmp_path_factory) -> Path:
    leaf = tmp_path_factory.mktemp("configs") / "deeplabv3plus_r101-d8_no-pretrained.py"
    leaf.write_text(f"_base_ = ['{PAPER_VOC}']\nmodel = dict(pretrained=None)\n")
    return leaf


@pytest.mark.parametrize("loss", ["ce", "lovasz", "pixiou", "ce_lovasz", "ce_pixiou"])
def test_one_paper_config_step_with_each_loss(tmp_path, voc_512, paper_leaf, loss):
    params = load_train_params(ROOT / "params.yaml")
    summary = run(RunSpec(
        config=str(paper_leaf), loss=loss, terms=params.terms_of(loss, "test"), seed=0,
        iterations=1, val_interval=1, batch_size=2, deterministic=params.deterministic,
        overlays=1), Placement(str(tmp_path / "run"), str(voc_512)))
    assert summary.iterations == 1
    assert summary.history[0]["loss"] > 0
    assert 0 <= summary.metrics["mIoU"] <= 100
    if params.deterministic:  # armed, but only to warn
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark
