"""The report stage (pipeline/report): tables from fixture results, claim verdicts, errors,
determinism, DVC metrics/plots through a real DVC repo, and the figures."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data.layouts import VOC_CLASSES
from pipeline.params import ParamsError
from pipeline.report.__main__ import build, main, write
from pipeline.report.compare import ClaimParams, check_claim
from pipeline.report.gradients import gradient_study
from pipeline.report.published import load_published
from pipeline.report.results import load_results
from pipeline.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

from .conftest import GIT, ROOT, dvc

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
TERMS = {key: loss["terms"] for key, loss in PARAMS["train"]["losses"].items()}
#: The claims the fixture tests check (the default's first, and the PixIoU ones).
CLAIMS = [{"better": "lovasz", "worse": "ce", "metric": "mIoU", "source": "Berman et al. 2018"},
          *({"better": "pixiou", "worse": "lovasz", "metric": metric,
             "source": "Yu et al. 2021, PixIoU as defined in docs/pixiou.md"}
            for metric in ("mIoU", "mPixIoU"))]


def trial(loss, seed, miou=None, mpixiou=None, status="finished", error=None,
          iterations=160, config="fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128"):
    """image-mIoU is mIoU - 1 throughout (per class too), so its Δs are mIoU's."""
    finished = status == "finished"
    per_class = {f"IoU.{c}": (miou + i if finished else None) for i, c in enumerate(VOC_CLASSES)}
    per_class.update({f"image-IoU.{c}": (miou + i - 1 if finished else None)
                      for i, c in enumerate(VOC_CLASSES)})
    image = None if miou is None else miou - 1
    return {"trial": f"{loss}_seed{seed}", "key": f"{loss}{seed}", "dataset": "synthetic_voc",
            "loss": loss, "loss_terms": TERMS[loss], "seed": seed, "lr": None, "config": config,
            "iterations": iterations, "batch_size": None, "workers": 1, "work_dir": "w",
            "mlflow_run_id": f"run-{loss}-{seed}", "status": status, "error": error,
            "mIoU": miou, "image-mIoU": image, "mPixIoU": mpixiou,
            "per_class": per_class if finished else None,
            # a rise, then flat over the plateau test's last 4 evaluations (settled)
            "history": [{"iteration": 0, "mIoU": (miou or 5) / 2, "image-mIoU": 1.0,
                         "mPixIoU": 0.0}] +
                       [{"iteration": i, "mIoU": miou or 5, "image-mIoU": image or 4,
                         "mPixIoU": mpixiou or 0.0} for i in (40, 80, 120, 160)],
            "world_size": 1, "wall_time_s": 1.0}


#: ce and lovasz finish every seed; pixiou's seed 2 failed; ce_pixiou is planned, never run.
FIXTURE_TRIALS = [
    trial("ce", 0, 10.0, -5.0), trial("ce", 1, 11.0, -4.0), trial("ce", 2, 12.0, -3.0),
    trial("lovasz", 0, 13.0, 1.0), trial("lovasz", 1, 15.0, 2.0), trial("lovasz", 2, 17.0, 3.0),
    trial("pixiou", 0, 16.0, 4.0), trial("pixiou", 1, 14.0, 1.0),
    trial("pixiou", 2, status="failed", error="Traceback (most recent call last):\n  ...\n"
          "RuntimeError: worker died: out of memory"),
]


def write_results(directory: Path, trials, dataset="synthetic_voc",
                  config="fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128",
                  data: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dataset}.json"
    start = {"protocol": "finetune", "sha256": "ab" * 32, "mIoU": 70.5, "source": "trained"}
    path.write_text(json.dumps({"dataset": dataset, "config": config, "data_hash": "h",
                                "mlflow_parent_run_id": "p", "start": start, "data": data,
                                "trials": trials},
                               indent=1))
    return path


def report_params(tmp_path: Path, datasets=("synthetic_voc",), **report) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["datasets"] = list(datasets)
    params["sweep"].update(losses=["ce", "lovasz", "pixiou", "ce_pixiou"], seeds=[0, 1, 2])
    params["sweep"]["convergence"]["losses"] = []
    params["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params["report"].update(results_dir=str(tmp_path / "results"),
                            output=str(tmp_path / "reports"),
                            published=str(ROOT / "reports/published.yaml"),
                            **{"claims": CLAIMS, **report})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture
def fixture_study(tmp_path):
    write_results(tmp_path / "results", FIXTURE_TRIALS)
    return report_params(tmp_path)


def test_fixture_results_give_the_expected_tables(fixture_study, tmp_path):
    assert main(["--params", str(fixture_study)]) == 0
    md = (tmp_path / "reports/tables.md").read_text()
    # t(0.975, 2) = 4.3027: lovasz - ce = [3, 4, 5] -> 4 ± 4.3027 / sqrt(3) = [1.52, 6.48].
    # mPixIoU: lovasz - ce = [6, 6, 6], an interval of width 0. image-mIoU (mIoU - 1): its
    # column beside mIoU, its Δs and CIs the same as mIoU's.
    assert "| Loss | Trials | mIoU | image-mIoU | mPixIoU | ΔmIoU vs CE [95% CI] |" in md
    assert ("| CE | 3/3 | 11.00 ± 1.00 | 10.00 ± 1.00 | -4.00 ± 1.00 | — | -4.00 [-6.48, -1.52] "
            "| — | -4.00 [-6.48, -1.52] | — | -6.00 [-6.00, -6.00] | not known |") in md
    # The best mean in bold, ties (15.00) included.
    assert ("| Lovász-Softmax | 3/3 | **15.00 ± 2.00** | **14.00 ± 2.00** | 2.00 ± 1.00 | "
            "+4.00 [+1.52, +6.48] | — | +4.00 [+1.52, +6.48] | — | +6.00 [+6.00, +6.00] | — | "
            "not known |") in md
    # pixiou: seeds 0, 1 finished (16, 14); vs lovasz (13, 15): diffs [3, -1], t(0.975, 1) =
    # 12.706 -> 1 ± 12.706 * 2.828 / sqrt(2); vs ce (10, 11): [6, 3].
    assert ("| Lovász-PixIoU | 2/3 (1 failed) | **15.00 ± 1.41** | **14.00 ± 1.41** | "
            "**2.50 ± 2.12** | +4.50 [-14.56, +23.56] | +1.00 [-24.41, +26.41] |") in md
    # The planned loss that never ran is a row of its own, counted, with no invented numbers.
    assert ("| CE + Lovász-PixIoU | 0/3 (3 missing) | — | — | — | — | — | — | — | — | — | "
            "not known |") in md
    assert "Failed: 1 trial(s): pixiou seed 2 (RuntimeError: worker died: out of memory)." in md
    assert ("Missing (planned, not in synthetic_voc.json): 3 trial(s): ce_pixiou seed 0; "
            "ce_pixiou seed 1; ce_pixiou seed 2.") in md
    # The claims, with the seeds they paired and their p-values adjusted for the family of 3
    # (Holm): lovasz - ce = [3, 4, 5] alone would be reproduced (p = 0.020 < 0.05), but it is
    # the smallest of 3 p-values, so it is multiplied by 3; the other two (diffs [3, -1],
    # p = 0.705) by 2 and 1, capped at 1.
    from scipy import stats

    p_lovasz = stats.ttest_rel([13, 15, 17], [10, 11, 12]).pvalue
    p_pixiou = stats.ttest_rel([16, 14], [13, 15]).pvalue
    assert p_lovasz < 0.05 < 3 * p_lovasz and 2 * p_pixiou > 1
    assert "### The papers' claims, checked (a family of 3)" in md
    # Detectable at 0.05 / 3 with 80% power, from the sd of the paired differences (1 and
    # 2.83): what a smaller |Δ| would need is said in the verdict
    from pipeline.stats import detectable_effect, seeds_needed

    seen = detectable_effect(1.0, 3, 0.05 / 3)
    assert ("| Lovász-Softmax > CE on mIoU | Berman et al. 2018 | synthetic_voc | "
            f"+4.00 [+1.52, +6.48] | {3 * p_lovasz:.3f} | {seen:.2f} | 0, 1, 2 | "
            f"**inconclusive: |Δ| 4.00 is below the {seen:.2f} its 3 seeds detect; "
            f"{seeds_needed(4.0, 1.0, 0.05 / 3)} seeds would detect 4.00** |") in md
    assert ("| Lovász-PixIoU > Lovász-Softmax on mIoU | Yu et al. 2021, PixIoU as defined in "
            "docs/pixiou.md | synthetic_voc | "
            f"+1.00 [-24.41, +26.41] | 1.000 | {detectable_effect(2 ** 1.5, 2, 0.05 / 3):.2f} | "
            "0, 1 | **inconclusive: |Δ| 1.00 is below the") in md
    assert "not corrected for the number of comparisons" in md  # the Δ columns
    assert "mPixIoU can be negative: per class, PixIoU lies in (2·IoU − 1, IoU]" in md
    # Per class: IoU.<c> = mIoU + index, so Lovász-Softmax (mean 15) is best on every class
    # but no column exists for the loss with no finished trial.
    assert "| Class | CE | Lovász-Softmax | Lovász-PixIoU |" in md
    assert "| background | 11.00 | **15.00** | 15.00 |" not in md  # 15.00 ties: both bold
    assert "| background | 11.00 | **15.00** | **15.00** |" in md
    assert "| aeroplane | 12.00 | **16.00** | **16.00** |" in md
    assert "### synthetic_voc: image-IoU per class" in md  # image-IoU.<c> = IoU.<c> - 1
    assert "| aeroplane | 11.00 | **15.00** | **15.00** |" in md
    assert "No finished trial, so no column: CE + Lovász-PixIoU." in md
    # The captions say how the models were trained, and whether enough: the plateau test
    # (flat over the last 4 evaluations) and the classes below 1 IoU (IoU.c >= 10)
    assert ("synthetic_voc, config `fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128`, fine-tuned "
            "from the CE checkpoint abababababab (trained, mIoU 70.50), 160 iterations.") in md
    assert ("last 4 evaluations (120 iterations; the least-squares line per seed, mean and 95% "
            "interval over the seeds); settled when the interval lies within ±1.50: CE +0.00 "
            "[+0.00, +0.00] (settled), Lovász-Softmax +0.00 [+0.00, +0.00] (settled)") in md
    assert ("Classes whose IoU stays below 1 (mean over the seeds), of all classes: CE 0/21, "
            "Lovász-Softmax 0/21, Lovász-PixIoU 0/21.") in md

    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert metrics["trials"] == {"finished": 8, "failed": 1, "stopped": 0, "missing": 3}
    assert metrics["synthetic_voc"]["pixiou"]["mIoU"] == 15.0
    assert metrics["synthetic_voc"]["pixiou"]["image-mIoU"] == 14.0
    assert metrics["synthetic_voc"]["ce_pixiou"]["mIoU"] is None
    assert metrics["synthetic_voc"]["ce"]["plateau_gain"] == 0.0
    assert metrics["synthetic_voc"]["ce"]["settled"] is True
    assert metrics["synthetic_voc"]["ce"]["classes_below_1"] == 0
    claim = metrics["claims"]["synthetic_voc"]["lovasz_vs_ce_mIoU"]
    assert claim["verdict"] == INCONCLUSIVE and claim["family"] == 3
    assert claim["p_value"] == pytest.approx(p_lovasz, abs=1e-4)
    assert claim["p_holm"] == pytest.approx(3 * p_lovasz, abs=1e-4)

    rows = (tmp_path / "reports/results.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,arm,loss,label,seed,lr,status")
    assert len(rows) == 1 + 12
    assert sum(",failed," in r for r in rows) == 1 and sum(",missing," in r for r in rows) == 3

    tex = (tmp_path / "reports/tables.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Lov\'asz-Softmax & 3/3 & \textbf{15.00 $\pm$ 2.00}" in tex
    assert r"\textbf{inconclusive: |$\Delta$| 4.00 is below the" in tex


def test_the_data_table_shows_the_labels_against_their_targets(tmp_path):
    statistics = {"images": 400, "objects_per_image": {"mean": 2.44, "median": 2.0},
                  "object_classes_per_image": {"mean": 1.47, "median": 1.0},
                  "class_share": {"background": 0.716, "person": 0.06, "cat": 0.02}}
    targets = [{"target": "objects_per_image (mean)", "range": [2.0, 2.8], "value": 2.44,
                "met": True},
               {"target": "class_share.background", "range": [0.75, 0.8], "value": 0.716,
                "met": False},
               {"target": "largest classes", "range": ["background"], "value": ["background"],
                "met": True}]
    write_results(tmp_path / "results", FIXTURE_TRIALS,
                  data={"statistics": statistics, "targets": targets})
    _, built = build(report_params(tmp_path))
    md = built.texts["tables.md"]
    assert "### synthetic_voc: the labels against their targets" in md
    assert "| objects per image (mean; median) | 2.44; 2 | — | — |" in md
    assert "| largest classes (pixel share) | background 71.6%, person 6.0%, cat 2.0% |" in md
    assert "| class_share.background | 0.716 | [0.75, 0.8] | **NO** |" in md
    assert "| largest classes | background | background | yes |" in md
    # an older results file without statistics: no table, no error
    write_results(tmp_path / "results", FIXTURE_TRIALS)
    assert "against their targets" not in build(report_params(tmp_path))[1].texts["tables.md"]


def test_same_results_give_byte_identical_outputs(fixture_study, tmp_path):
    assert main(["--params", str(fixture_study)]) == 0
    first = {p: p.read_bytes() for p in sorted((tmp_path / "reports").rglob("*")) if p.is_file()}
    assert main(["--params", str(fixture_study)]) == 0
    second = {p: p.read_bytes() for p in sorted((tmp_path / "reports").rglob("*"))
              if p.is_file()}
    assert first == second
    assert len(first) >= 10


def test_figures_are_valid_non_blank_pngs(fixture_study, tmp_path):
    write(*build(fixture_study))
    pngs = sorted((tmp_path / "reports/figures").glob("*.png"))
    assert [p.name for p in pngs] == ["gradient_study.png", "miou_per_seed.png",
                                      "per_class_synthetic_voc.png", "validation_curves.png"]
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        # Not blank: many colours (lines, dots, text) and real contrast against white.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, png.name
        assert (pixels.min(axis=2) < 128).mean() > 0.005, png.name


@pytest.mark.parametrize("content, expected", [
    ("", "the file is empty"),
    ("{not json", "not valid JSON"),
    ("[]", "the top level is list"),
    (json.dumps({"dataset": "synthetic_voc", "config": "c", "trials": []}), "'trials' is empty"),
    (json.dumps({"dataset": "synthetic_cityscapes", "config": "c", "trials": [1]}),
     "holds the results of 'synthetic_cityscapes'"),
    (json.dumps({"dataset": "synthetic_voc", "config": "c",
                 "trials": [{k: v for k, v in trial("ce", 0, 1.0, 1.0).items() if k != "seed"}]}),
     "trials[0] has no 'seed'"),
    (json.dumps({"dataset": "synthetic_voc", "config": "c",
                 "trials": [{**trial("ce", 0, 1.0, 1.0), "mIoU": "high"}]}),
     "trials[0].mIoU is 'high'"),
    (json.dumps({"dataset": "synthetic_voc", "config": "c",
                 "trials": [{**trial("ce", 0, 1.0, 1.0), "status": "running"}]}),
     "trials[0].status is 'running'"),
])
def test_bad_results_files_name_the_file_and_keep_the_old_report(tmp_path, capsys, content,
                                                                 expected):
    (tmp_path / "results").mkdir()
    path = tmp_path / "results/synthetic_voc.json"
    path.write_text(content)
    old = tmp_path / "reports/tables.md"
    old.parent.mkdir()
    old.write_text("the previous report")
    assert main(["--params", str(report_params(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err, err
    assert old.read_text() == "the previous report"
    assert sorted(p.name for p in old.parent.iterdir()) == ["tables.md"]


def test_a_missing_results_file_says_which_stage_makes_it(tmp_path, capsys):
    assert main(["--params", str(report_params(tmp_path))]) == 2
    assert "synthetic_voc.json: not found (run the sweep first: dvc repro sweep@synthetic_voc)" \
        in capsys.readouterr().err


@pytest.mark.parametrize("report, expected", [
    (dict(bogus=1), "unknown key 'report.bogus'"),
    (dict(confidence=1.5), "report.confidence must lie in (0, 1)"),
    (dict(baselines=["xe"]), "report.baselines[0] is 'xe', not a key of train.losses"),
    (dict(claims=[dict(better="pixiou", worse="lovaz", metric="mIoU", source="s")]),
     "report.claims[0].worse is 'lovaz'"),
    (dict(claims=[dict(better="pixiou", worse="lovasz", metric="accuracy", source="s")]),
     "report.claims[0].metric is 'accuracy'"),
    (dict(claims=[dict(better="pixiou", worse="lovasz", metric="mIoU")]),
     "missing key 'report.claims[0].source'"),
])
def test_bad_report_params_name_the_key(fixture_study, tmp_path, report, expected):
    with pytest.raises(ParamsError) as error:
        build(report_params(tmp_path, **report))
    assert expected in str(error.value)


def results_of(tmp_path, ce, other, other_loss="lovasz"):
    trials = [trial("ce", s, v, v) for s, v in enumerate(ce)]
    trials += [trial(other_loss, s, v, v) for s, v in enumerate(other) if v is not None]
    write_results(tmp_path, trials)
    return load_results(tmp_path / "synthetic_voc.json", "synthetic_voc", ["ce", other_loss],
                        range(len(ce)))


@pytest.mark.parametrize("ce, lovasz, verdict", [
    ([10, 11, 12, 10.5], [14, 15.5, 16, 15], REPRODUCED),  # clear win on every seed
    ([14, 15.5, 16, 15], [10, 11, 12, 10.5], NOT_REPRODUCED),  # clear loss
    ([10, 12, 11, 13], [12, 10, 11.5, 12.5], INCONCLUSIVE),  # overlapping: CI contains 0
    ([10, 11, 12], [14, None, None], INCONCLUSIVE),  # one paired seed: no interval
])
def test_claim_verdicts_on_constructed_cases(tmp_path, ce, lovasz, verdict):
    claim = ClaimParams("lovasz", "ce", "mIoU", "Berman et al. 2018")
    result = check_claim(claim, results_of(tmp_path, ce, lovasz), 0.95)
    assert result.verdict == verdict
    paired = [s for s, v in enumerate(lovasz) if v is not None]
    assert result.difference.seeds == tuple(paired)
    diffs = [lovasz[s] - ce[s] for s in paired]
    assert result.difference.mean == pytest.approx(sum(diffs) / len(diffs))


def test_a_claim_about_a_loss_that_did_not_run_is_inconclusive_and_says_why(tmp_path):
    results = results_of(tmp_path, [10, 11, 12], [16, 17, 18], other_loss="pixiou")
    result = check_claim(ClaimParams("lovasz", "ce", "mIoU", "s"), results, 0.95)
    assert result.verdict == INCONCLUSIVE and result.difference is None
    assert result.reason == "'lovasz' is not in this study (sweep.losses)"


def test_published_number_shown_only_where_the_setting_matches(tmp_path):
    config = "deeplabv3plus_r101-d8_4xb4-20k_voc12aug-512x512"
    for iterations, expected in ((20000, "| 77.22 [1] |"), (2000, "| not known |")):
        trials = [{**trial(loss, s, 70.0 + s, 50.0, iterations=iterations, config=config),
                   "dataset": "voc"} for loss in ("ce", "lovasz") for s in range(2)]
        write_results(tmp_path / "results", trials, dataset="voc", config=config)
        params = report_params(tmp_path, datasets=["voc"])
        yaml_params = yaml.safe_load(params.read_text())
        yaml_params["sweep"].update(losses=["ce", "lovasz"], seeds=[0, 1])
        params.write_text(yaml.safe_dump(yaml_params, allow_unicode=True))
        _, built = build(params)
        ce_row = next(line for line in built.texts["tables.md"].splitlines()
                      if line.startswith("| CE |"))
        lovasz_row = next(line for line in built.texts["tables.md"].splitlines()
                          if line.startswith("| Lovász-Softmax |"))
        assert ce_row.endswith(expected), ce_row
        assert lovasz_row.endswith("| not known |")  # no published Lovász number is known
        has_source = "[1] mIoU 77.22: MMSegmentation 1.2.2 model zoo" in built.texts["tables.md"]
        assert has_source == (iterations == 20000)


def test_published_mmseg_numbers_agree_with_the_installed_model_zoo():
    import mmseg

    metafile = Path(mmseg.__file__).parent / ".mim/configs/deeplabv3plus/metafile.yaml"
    zoo = {m["Name"]: m["Results"]["Metrics"]["mIoU"]
           for m in yaml.safe_load(metafile.read_text())["Models"]}
    published = load_published(ROOT / "reports/published.yaml")
    assert published
    for entry in published:
        assert entry.source == "MMSegmentation 1.2.2 model zoo"
        assert zoo[entry.config] == entry.value, entry.config
        assert (ROOT / "mmseg_configs" / f"{entry.config}.py").is_file()


def test_gradient_study_shows_where_iou_gradients_vanish():
    points = gradient_study()
    case = lambda name: [p for p in points if p["case"] == name]  # noqa: E731
    no_overlap = case("no overlap")
    assert all(p["iou"] == 0 and p["Lovász-Softmax"] == 0 for p in no_overlap)
    pix = [p["Lovász-PixIoU"] for p in no_overlap]
    assert pix[0] > 0 and all(np.diff(pix) > 0)
    equal_area = case("equal-area shift")
    assert len({p["iou"] for p in equal_area}) == 1
    assert len({p["Lovász-Softmax"] for p in equal_area}) == 1  # IoU: blind to where FPs are
    assert all(np.diff([p["Lovász-PixIoU"] for p in equal_area]) > 0)
    partial = case("partial overlap")
    assert partial[-1]["iou"] == 0 and partial[-1]["Lovász-Softmax"] == 0
    assert all(p["Lovász-PixIoU"] > p["Lovász-Softmax"] for p in points)
    # The training default (classes 'present', w.r.t. the logit): the background's term gives
    # Lovász-Softmax a gradient, but one blind to where the false positives are
    training = [p["Lovász-Softmax, training"] for p in no_overlap]
    assert training[0] > 0 and len(set(training)) == 1
    assert all(np.diff([p["Lovász-PixIoU, training"] for p in no_overlap]) > 0)
    assert all(p["Lovász-PixIoU, training"] > p["Lovász-Softmax, training"] for p in points)


@pytest.mark.slow
def test_report_stage_in_a_dvc_repo_gives_dvc_metrics_and_plots(tmp_path):
    """The project's own `report` stage (dvc.yaml), run by `dvc repro` in a fresh repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "pipeline", repo / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "reports").mkdir()
    shutil.copy(ROOT / "reports/published.yaml", repo / "reports/published.yaml")
    write_results(repo / "results", FIXTURE_TRIALS)
    params = yaml.safe_load(report_params(tmp_path).read_text())
    params["report"].update(results_dir="results", output="reports",
                            published="reports/published.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    project = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc_yaml = {"stages": {"report": project["stages"]["report"]},
                "plots": project["plots"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, allow_unicode=True))
    subprocess.run(GIT + ["init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q", check=True)
    dvc(repo, "repro", "report", check=True)
    shown = json.loads(dvc(repo, "metrics", "show", "--json", check=True).stdout)
    (workspace,) = shown.values()  # only the workspace: no revision was asked for
    metrics = workspace["data"]["reports/metrics.json"]["data"]
    assert metrics["synthetic_voc"]["lovasz"]["mIoU"] == 15.0
    assert metrics["trials"]["failed"] == 1
    plots = json.loads(dvc(repo, "plots", "show", "--json", check=True).stdout)["data"]
    assert "reports/figures/gradient_study.png" in plots
    assert "reports/plots/validation/synthetic_voc_lovasz.csv" in plots
    assert "reports/plots/gradient_study/no_overlap.csv" in plots
    # A rerun with unchanged inputs is a no-op.
    assert "didn't change" in dvc(repo, "repro", "report", check=True).stdout


def test_classes_below_1_iou_are_counted_on_the_mean_over_seeds():
    from pipeline.report.compare import _classes_below_1
    from pipeline.report.results import FINISHED, LossResults, TrialResult

    def trial(seed, iou_a, iou_b, curve):
        return TrialResult("ce", seed, FINISHED, {"mIoU": 1.0, "mPixIoU": 0.0},
                           {"IoU.a": iou_a, "IoU.b": iou_b},
                           [{"iteration": i, "mIoU": m} for i, m in enumerate(curve)])

    # a: 0.5 and 1.2 average 0.85 (below 1); b: 0 and 3 average 1.5 (not)
    losses = LossResults("ce", "CE", [{"type": "CrossEntropyLoss"}],
                         [trial(0, 0.5, 0.0, [10, 12, 13]), trial(1, 1.2, 3.0, [10, 11, 14])])
    assert _classes_below_1(losses) == (1, 2)


def test_the_readme_shows_the_committed_reports_tables():
    from pipeline.report.readme import main as readme

    assert readme(["--readme", str(ROOT / "README.md"), "--tables",
                   str(ROOT / "reports/tables.md"), "--check"]) == 0


def test_the_readme_results_are_regenerated_from_the_tables(tmp_path):
    from pipeline.report.readme import BEGIN, END
    from pipeline.report.readme import main as readme

    tables = tmp_path / "tables.md"
    tables.write_text("# The study's results\n\n### The papers' claims, checked (a family of 2)\n"
                      "\n| a |\n\n### d: the losses compared\n\n| b |\n\n### d: IoU per class\n"
                      "\n| c |\n")
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{BEGIN}\nold numbers\n{END}\nrest\n")
    assert readme(["--readme", str(path), "--tables", str(tables), "--check"]) == 1
    assert readme(["--readme", str(path), "--tables", str(tables)]) == 0
    assert path.read_text() == (f"intro\n{BEGIN}\n#### The papers' claims, checked (a family "
                                f"of 2)\n\n| a |\n\n#### d: the losses compared\n\n| b |\n{END}"
                                "\nrest\n")
    assert readme(["--readme", str(path), "--tables", str(tables), "--check"]) == 0


def test_the_convergence_arm_gets_its_table_figure_plots_and_claim(tmp_path):
    """Convergence trials (arm: convergence) beside the fine-tuning ones: a table per dataset
    with iterations to the threshold and mIoU-AUC, a figure with bands, a DVC plot, and the
    claim judged on the paired mIoU-AUC."""
    def arm(loss, seed, curve):
        record = trial(loss, seed, curve[-1], 0.0)
        record.update(arm="convergence", trial=f"convergence_{loss}_seed{seed}",
                      key=f"c{loss}{seed}", iterations=20, mlflow_run_id=f"c-{loss}-{seed}",
                      history=[{"iteration": 10 * i, "mIoU": v, "image-mIoU": v, "mPixIoU": v}
                               for i, v in enumerate(curve)])
        return record

    trials = [t for t in FIXTURE_TRIALS if t["loss"] != "pixiou"]
    trials += [arm("ce", s, [20.0, 40.0, 50.0]) for s in range(3)]  # 20 + 0.9 * 30 = 47
    trials += [arm("lovasz", s, [20.0, 25.0 + s, 30.0]) for s in range(3)]  # never reaches
    trials += [arm("pixiou", s, [20.0, 45.0 + s, 50.0]) for s in range(3)]  # 47 by 10 to 14
    write_results(tmp_path / "results", trials)
    params = report_params(tmp_path, claims=[
        {"better": "pixiou", "worse": "lovasz", "metric": "mIoU-AUC", "arm": "convergence",
         "source": "Yu et al. 2021"}])
    raw = yaml.safe_load(params.read_text())
    raw["sweep"].update(losses=["ce", "lovasz"], convergence={"losses": ["ce", "lovasz",
                                                                         "pixiou"]})
    params.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    assert main(["--params", str(params)]) == 0
    md = (tmp_path / "reports/tables.md").read_text()
    assert "### synthetic_voc: how fast the losses learn (convergence arm)" in md
    # CE crosses 47 at 7/10 of the way from 40 (at 10) to 50 (at 20): iteration 17
    assert "| CE | 3/3 | 20.00 | 50.00 [50.00, 50.00] | 17.00 [17.00, 17.00] |" in md
    assert "| Lovász-Softmax | 3/3 | 20.00 | 30.00 [30.00, 30.00] | — (0/3 reached) |" in md
    # mIoU-AUC by hand: CE (10 * 30 + 10 * 45) / 20 = 37.5
    assert "| 37.50 [37.50, 37.50] | — |" in md
    assert ("| Lovász-PixIoU converges faster than Lovász-Softmax (mIoU-AUC, convergence arm) "
            "| Yu et al. 2021 | synthetic_voc | +15.00 [+15.00, +15.00] |") in md
    # by hand: (10 * (20 + 45 + s) / 2 + 10 * (45 + s + 50) / 2) / 20 = 40 + s / 2 against
    # Lovász-Softmax's 25 + s / 2
    assert (tmp_path / "reports/figures/convergence_curves.png").is_file()
    band = (tmp_path / "reports/plots/convergence/synthetic_voc_pixiou.csv").read_text()
    assert band.splitlines()[0] == "iteration,mIoU,low,high,seeds"
    assert band.splitlines()[2].startswith("10,46.0000,") and band.splitlines()[2].endswith(",3")
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    claim = metrics["claims"]["synthetic_voc"]["pixiou_vs_lovasz_mIoU-AUC_convergence"]
    assert claim["verdict"] == "reproduced" and claim["delta"] == 15.0
    rows = (tmp_path / "reports/results.csv").read_text().splitlines()
    assert sum(",convergence," in r for r in rows) == 9
