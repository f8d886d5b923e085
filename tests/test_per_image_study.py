"""Berman et al.'s second experiment under `dvc repro`: a reduced study with the per-image
Lovász losses and mmseg's own DiceLoss as study losses; the report compares them on mIoU and
image-mIoU, checks the per-image claims, and every trial's MLflow run holds image-mIoU."""
from __future__ import annotations

import csv
import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import dvc, project_copy, tiny_study

LOSSES = ["ce", "lovasz", "lovasz_img", "pixiou", "pixiou_img", "dice"]


def per_image_study(params: dict) -> None:
    tiny_study(params)
    params["sweep"]["losses"] = LOSSES
    params["sweep"]["convergence"]["losses"] = []  # the fine-tuning arm's comparison only
    params["report"]["claims"] = [
        {"better": "lovasz_img", "worse": "lovasz", "metric": "image-mIoU",
         "source": "Berman et al. 2018"},
        {"better": "lovasz", "worse": "lovasz_img", "metric": "mIoU",
         "source": "Berman et al. 2018"}]


@pytest.mark.slow
def test_a_reduced_study_compares_per_image_and_batch_optimisation(tmp_path):
    repo = project_copy(tmp_path / "repo", per_image_study)
    dvc(repo, "repro", check=True)

    results = json.loads((repo / "results/synthetic_voc.json").read_text())
    trials = {t["loss"]: t for t in results["trials"]}
    assert set(trials) == set(LOSSES) and all(t["status"] == "finished" for t in trials.values())
    assert trials["lovasz_img"]["loss_terms"] == [
        {"type": "LovaszSoftmaxLoss", "per_image": True, "loss_weight": 1.0}]
    assert trials["dice"]["loss_terms"][0]["type"] == "DiceLoss"
    for trial in trials.values():
        assert 0 <= trial["image-mIoU"] <= 100
        assert all("image-mIoU" in point for point in trial["history"])
        assert len([k for k in trial["per_class"] if k.startswith("image-IoU.")]) == 21
    assert results["data"]["statistics"]["objects_per_image"]["mean"] > 0

    tables = (repo / "reports/tables.md").read_text()
    assert "| Loss | Trials | mIoU | image-mIoU | mPixIoU |" in tables
    assert "Δimage-mIoU vs Lovász-Softmax [95% CI]" in tables
    for name in ("Lovász-Softmax (per image)", "Lovász-PixIoU (per image)", "Dice (mmseg)"):
        assert f"| {name} | 1/1 |" in tables
    assert "### synthetic_voc: image-IoU per class" in tables
    assert "### synthetic_voc: the labels against their targets" in tables
    assert "| Lovász-Softmax (per image) > Lovász-Softmax on image-mIoU | Berman et al. 2018 |" \
        in tables
    assert "| Lovász-Softmax > Lovász-Softmax (per image) on mIoU |" in tables
    assert "(a family of 2)" in tables

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["synthetic_voc"]["lovasz_img"]["image-mIoU"] == \
        pytest.approx(trials["lovasz_img"]["image-mIoU"], abs=1e-4)
    assert set(metrics["claims"]["synthetic_voc"]) == {"lovasz_img_vs_lovasz_image-mIoU",
                                                        "lovasz_vs_lovasz_img_mIoU"}
    with open(repo / "reports/plots/validation/synthetic_voc_lovasz_img.csv") as curve:
        assert next(csv.reader(curve)) == ["iteration", "mIoU", "image-mIoU", "mPixIoU", "seeds"]

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run = client.get_run(trials["lovasz_img"]["mlflow_run_id"])
    assert run.data.params["loss_name"] == "Lovász-Softmax (per image)"
    assert run.data.metrics["final.image-mIoU"] == trials["lovasz_img"]["image-mIoU"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "image-mIoU")]
    assert sorted(steps) == [p["iteration"] for p in trials["lovasz_img"]["history"]]
    assert "image-IoU.background" in run.data.metrics
