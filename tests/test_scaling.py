"""The effective batch of a trial against its config's `<gpus>xb<batch>` name, and the
learning-rate rule: a mismatch fails with a clear message, or scales lr linearly when asked."""
from __future__ import annotations

import pytest

from pipeline.params import ParamsError
from pipeline.scaling import named_world, plan_batch

VOC = "mmseg_configs/deeplabv3plus_r101-d8_4xb4-20k_voc12aug-512x512.py"
CITYSCAPES = "mmseg_configs/deeplabv3plus_r101-d8_4xb2-80k_cityscapes-769x769.py"
TINY = "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py"


def test_config_names_give_their_world():
    assert named_world(VOC) == (4, 4)
    assert named_world(CITYSCAPES) == (4, 2)
    assert named_world(TINY) == (1, 4)
    assert named_world("mmseg_configs/my_experiment.py") is None


@pytest.mark.parametrize("config,batch,lr,workers,per_worker", [
    (VOC, 4, 0.01, 4, None),  # the model zoo's 4 GPUs x 4
    (VOC, 4, 0.01, 2, 8),  # 2 GPUs x 8: the same 16
    (CITYSCAPES, 2, 0.01, 4, None),
    (TINY, 4, 0.01, 1, None),
    (TINY, 4, 0.01, 2, 2),  # 2 CPU workers x 2
])
def test_a_matching_batch_keeps_the_learning_rate(config, batch, lr, workers, per_worker):
    plan = plan_batch(config, batch, lr, workers, per_worker, None, scale_lr=False)
    assert plan.effective_batch == plan.named_batch and plan.lr == lr and not plan.scaled


@pytest.mark.parametrize("config,batch,workers,per_worker,message", [
    (VOC, 4, 8, None, "8 worker(s) x 4 = 32, but the config is named for 4x4 = 16"),
    (CITYSCAPES, 2, 4, 4, "4 worker(s) x 4 = 16, but the config is named for 4x2 = 8"),
    (TINY, 4, 2, None, "2 worker(s) x 4 = 8, but the config is named for 1x4 = 4"),
])
def test_a_mismatch_fails_naming_both_batches_and_the_way_out(config, batch, workers,
                                                                per_worker, message):
    with pytest.raises(ParamsError) as error:
        plan_batch(config, batch, 0.01, workers, per_worker, None, scale_lr=False)
    assert message in str(error.value)
    assert "sweep.scale_lr: true" in str(error.value) and "train.batch_size" in str(error.value)


@pytest.mark.parametrize("config,batch,workers,per_worker,lr,expected", [
    (VOC, 4, 8, None, None, 0.02),  # 32 / 16
    (VOC, 4, 2, None, None, 0.005),  # 8 / 16
    (CITYSCAPES, 2, 4, 4, None, 0.02),  # 16 / 8
    (TINY, 4, 2, None, 0.003, 0.006),  # a study lr (or a searched one) scales the same way
])
def test_scale_lr_scales_linearly(config, batch, workers, per_worker, lr, expected):
    plan = plan_batch(config, batch, 0.01, workers, per_worker, lr, scale_lr=True)
    assert plan.scaled and plan.lr == pytest.approx(expected)
    assert plan.base_lr == (lr or 0.01)


def test_the_sweep_plans_scaled_trials(tmp_path, tiny_data):
    """Through params.yaml: the trial's spec carries the scaled lr, so its key changes too."""
    from pipeline.sweep import load_study, plan_trials
    from tests.conftest import study_params

    scaled = study_params(tmp_path, tiny_data,
                          sweep=dict(losses=["ce"], cpu_workers_per_trial=2, scale_lr=True))
    (trial,) = plan_trials(load_study("synthetic_voc", scaled))
    assert trial.batch.effective_batch == 8 and trial.spec.lr == pytest.approx(0.02)
    plain = study_params(tmp_path, tiny_data, sweep=dict(losses=["ce"]))
    (same,) = plan_trials(load_study("synthetic_voc", plain))
    assert same.spec.lr is None and same.batch.lr == pytest.approx(0.01)
    assert same.key != trial.key


@pytest.mark.parametrize("key,value,error", [
    ("max_failures", -1, None), ("max_failures", 0, None), ("max_failures", 3, None),
    ("max_failures", -2, "max_failures must be >= 0, or -1"),  # -1: Tune's retry forever
    ("max_repeated_failures", 1, None), ("max_repeated_failures", 3, None),
    ("max_repeated_failures", 0, "sweep.max_repeated_failures must be >= 1"),
])
def test_the_retry_params_take_tunes_forever_and_a_cap_of_at_least_one(key, value, error):
    from pipeline.params import parse_section
    from pipeline.sweep import SweepParams

    data = {"losses": ["ce"], "seeds": [0], key: value}
    if error is None:
        assert getattr(parse_section(SweepParams, data, "sweep"), key) == value
    else:
        with pytest.raises(ParamsError, match=error):
            parse_section(SweepParams, data, "sweep")
