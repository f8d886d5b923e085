"""`train.deterministic` never fails a run: the settings chosen for CUDA, and what a run applies.

CUDA's bilinear-upsampling and adaptive-pooling backward (both in DeepLabV3+) have no
deterministic kernel. On CPU, `Tensor.put_` is such an op too, so it stands in for them here:
under mmengine's `deterministic=True` it raises, under the study's settings it warns and runs.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from pipeline.determinism import CUBLAS_WORKSPACE, STRICT, determinism
from pipeline.train import Placement, RunSpec, run
from tests.test_train import TINY_VOC


@pytest.fixture
def torch_state(monkeypatch):
    """Put torch's process-wide determinism switches back as they were."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def nondeterministic_op() -> None:
    """An op torch has no deterministic implementation of (like CUDA's upsampling backward)."""
    torch.zeros(4).put_(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))


def test_the_settings_chosen_for_a_cuda_run():
    gpu = determinism(STRICT, on_gpu=True)
    assert gpu.torch_algorithms and gpu.warn_only
    assert gpu.cudnn_deterministic and not gpu.cudnn_benchmark
    assert gpu.env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} == CUBLAS_WORKSPACE
    # true on GPU: the seed only; cuDNN benchmarks (GPU runs are not bit-identical anyway)
    seeded = determinism(True, on_gpu=True)
    assert not seeded.torch_algorithms and seeded.cudnn_benchmark and seeded.env == {}
    for mode in (True, STRICT):  # on CPU both give bit-identical runs
        cpu = determinism(mode, on_gpu=False)
        assert cpu.torch_algorithms and cpu.warn_only and cpu.env == {}
    assert not determinism(False, on_gpu=True).torch_algorithms
    with pytest.raises(ValueError, match="train.deterministic must be true, false or strict"):
        determinism("yes", on_gpu=True)


@pytest.mark.parametrize("mode, benchmark", [(True, True), (STRICT, False), (False, True)])
def test_the_gpu_config_benchmarks_cudnn_unless_strict(tmp_path, mode, benchmark):
    """What a GPU trial's config asks of cuDNN, and what MLflow records (the mode)."""
    from pipeline.train import build_config

    cfg = build_config(RunSpec(config="mmseg_configs/deeplabv3plus_r101-d8_4xb4-20k_"
                                      "voc12aug-512x512.py", loss="ce", terms=[], seed=0,
                               deterministic=mode), Placement(str(tmp_path)), on_gpu=True)
    assert cfg.env_cfg.cudnn_benchmark is benchmark
    assert cfg.randomness == {"seed": 0, "deterministic": False}


def test_mmengine_deterministic_raises_where_the_study_settings_warn(torch_state):
    from mmengine.runner import set_random_seed

    set_random_seed(0, deterministic=True)  # what `randomness.deterministic=True` does
    with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
        nondeterministic_op()

    determinism(STRICT, on_gpu=True).apply()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nondeterministic_op()  # runs
    assert any("deterministic implementation" in str(w.message) for w in caught)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_deterministic_run_leaves_only_warnings_armed(tmp_path, tiny_data, torch_state):
    """A real run with train.deterministic: deterministic algorithms on, in warn-only mode, so
    an op with no deterministic kernel (on CUDA: DeepLabV3+'s backward) cannot fail it."""
    torch.use_deterministic_algorithms(False)
    run(RunSpec(config=TINY_VOC, loss="ce", terms=[{"type": "CrossEntropyLoss"}], seed=0,
                iterations=2, val_interval=2, overlays=0, threads=1, deterministic=True),
        Placement(str(tmp_path / "run"), str(tiny_data)))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark
    nondeterministic_op()  # would raise had mmengine armed determinism itself
