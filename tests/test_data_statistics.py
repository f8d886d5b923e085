"""The data stage's label statistics (pipeline.data.stats) and the generated datasets against the
targets params.yaml declares for them (the real datasets' published figures)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline.data.layouts import CITYSCAPES, IGNORE_INDEX, VOC_AUG
from pipeline.data.stats import LabelStatistics, StatisticsTargets
from pipeline.params import ParamsError, parse_section
from tests.conftest import ROOT


def test_objects_classes_areas_and_thickness_of_hand_built_labels():
    statistics = LabelStatistics(VOC_AUG)
    label = np.zeros((20, 40), np.uint8)
    label[2:6, 2:6] = 15           # a person, 16 pixels
    label[10:14, 30:34] = 15       # another person, apart
    label[0:20, 20:22] = 8         # a cat as a 2-pixel-wide bar, 40 pixels
    label[:, 22] = IGNORE_INDEX    # ignored pixels count nowhere
    statistics.add(label)
    empty = np.zeros((20, 40), np.uint8)  # background only
    statistics.add(empty)
    summary = statistics.summary()
    assert summary["images"] == 2
    assert summary["objects_per_image"] == {"mean": 1.5, "median": 1.5}  # 3 objects, 0
    assert summary["object_classes_per_image"] == {"mean": 1.0, "median": 1.0}  # 2, 0
    labelled = 2 * 800 - 20
    assert summary["class_share"]["person"] == pytest.approx(32 / labelled, abs=1e-6)
    assert summary["image_share"]["person"] == 0.5 and summary["image_share"]["background"] == 1
    assert summary["object_area"]["person"]["q50"] == pytest.approx(16 / 800)
    assert summary["thickness"]["cat"]["q50"] == pytest.approx(2 / 40)  # 40 px / 20 px / width
    assert "dog" not in summary["object_area"]  # never seen


def test_touching_objects_of_one_class_are_one_region_unless_a_border_parts_them():
    statistics = LabelStatistics(VOC_AUG)
    label = np.zeros((10, 10), np.uint8)
    label[2:5, 2:5] = 3
    label[5:8, 5:8] = 3  # touches the first diagonally: one region (8-neighbourhood)
    statistics.add(label)
    label[4, 4] = IGNORE_INDEX  # VOC's border between the two instances parts them
    label[5, 5] = IGNORE_INDEX
    statistics.add(label)
    assert statistics.objects == [1, 2]


def test_targets_flag_what_is_off():
    targets = parse_section(StatisticsTargets, {
        "objects_per_image": [2.0, 2.8], "class_share": {"traffic_sign": [0.0, 0.01]},
        "largest": ["road", "building"], "thickness": {"pole": [0, 0.01]}}, "t")
    statistics = {"objects_per_image": {"mean": 3.1}, "object_classes_per_image": {"mean": 1},
                  "class_share": {"road": 0.5, "sky": 0.3, "building": 0.2,
                                  "traffic sign": 0.005},
                  "thickness": {"pole": {"q50": 0.02}}}
    rows = {r["target"]: r["met"] for r in targets.check(statistics)}
    assert rows == {"objects_per_image (mean)": False, "class_share.traffic_sign": True,
                    "thickness.pole (median)": False, "largest classes": False}
    assert targets.unknown_classes(CITYSCAPES.classes) == []
    with pytest.raises(ParamsError, match=r"t.objects_per_image must be \[low, high\]"):
        parse_section(StatisticsTargets, {"objects_per_image": [3, 2]}, "t")


@pytest.mark.parametrize("key", ["synthetic_voc", "synthetic_cityscapes"])
def test_the_generated_datasets_meet_their_targets(tmp_path, key):
    """The data stage on params.yaml's own settings: manifest.json holds the statistics and each
    declared target is met."""
    from pipeline.data.__main__ import run

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = run(key, tmp_path / "params.yaml")
    written = json.loads((tmp_path / "data" / key / "manifest.json").read_text())
    assert written["targets"] == manifest["targets"]
    declared = params["datasets"][key]["targets"]
    assert len(manifest["targets"]) >= len(declared) - 1  # every range, plus 'largest'
    missed = [row for row in manifest["targets"] if not row["met"]]
    assert not missed, missed
    statistics = manifest["statistics"]
    assert statistics["images"] == params["datasets"][key]["train"] + \
        params["datasets"][key]["val"]


def test_a_target_naming_no_class_of_the_dataset_is_an_error(tmp_path):
    from pipeline.data.__main__ import run

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "data")
    params["datasets"]["synthetic_voc"]["targets"]["class_share"] = {"pedestrian": [0, 1]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="targets names 'pedestrian', not a class of voc-aug"):
        run("synthetic_voc", tmp_path / "params.yaml")
    assert not (tmp_path / "data" / "synthetic_voc").exists()


def test_the_statistics_command_reads_any_built_dataset(tiny_data, tmp_path, capsys):
    from pipeline.data.stats import main

    assert main([str(tiny_data / "synthetic_voc")]) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((tiny_data / "synthetic_voc" / "manifest.json").read_text())
    assert printed == manifest["statistics"]
    assert main([str(tmp_path)]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err
