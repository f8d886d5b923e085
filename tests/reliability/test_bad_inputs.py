"""Bad params.yaml, refused by the stage that reads it (and once under `dvc repro` on a finished
study), and a corrupted dataset, met by `dvc repro`."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc, results, study_params, summaries


@contextlib.contextmanager
def params_edited(repo, edit):
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    try:
        yield
    finally:
        path.write_text(original)


def _set(dotted, value):
    def edit(params):
        *parents, key = dotted.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = value
    return edit


def _delete(section):
    return lambda params: params.pop(section)


#: (what, the edit, the stage whose command must refuse it, what its error says)
BAD_PARAMS = [
    ("unknown key", _set("sweep.seed", [0]), "sweep", "unknown key 'sweep.seed'"),
    ("unknown key (report)", _set("report.confidense", 0.9), "report",
     "unknown key 'report.confidense'"),
    ("wrong type", _set("sweep.seeds", "0,1"), "sweep", "sweep.seeds: expected a list"),
    ("wrong type (number)", _set("train.iterations", "many"), "pretrain", "train.iterations"),
    ("unknown loss", _set("sweep.losses", ["ce", "focal"]), "sweep", "unknown loss 'focal'"),
    ("unknown dataset", _set("study.datasets", ["synthetic_voc", "imagenet"]), "data",
     "imagenet"),
    ("missing section", _delete("sweep"), "sweep", "sweep"),
    ("pretrain iterations", _set("pretrain.iterations", 0), "pretrain",
     "pretrain.iterations must be >= 1"),
    ("pretrain interval", _set("pretrain.val_interval", 100), "pretrain",
     "pretrain.val_interval (100) is longer than pretrain.iterations"),
    ("pretrain checkpoint hash", _set("pretrain.published.voc.sha256", "c7ff"), "pretrain",
     "pretrain.published.voc.sha256 must be the file's sha256"),
    ("unknown protocol", _set("study.protocol", "fine-tune"), "pretrain",
     "study.protocol must be one of"),
]


def stage_main(stage: str, dataset: str, params: Path) -> int:
    """The stage's command as dvc.yaml runs it (`python -m ...`), in this process."""
    from pipeline.data.__main__ import main as data
    from pipeline.pretrain import main as pretrain
    from pipeline.report.__main__ import main as report
    from pipeline.sweep.__main__ import main as sweep

    if stage == "report":
        return report(["--params", str(params)])
    return {"data": data, "pretrain": pretrain, "sweep": sweep}[stage](
        [dataset, "--params", str(params)])


@pytest.mark.parametrize("what, edit, stage, message", BAD_PARAMS,
                         ids=[b[0] for b in BAD_PARAMS])
def test_bad_params_are_refused_by_the_stage_before_any_work(tmp_path, tiny_data, capsys,
                                                             covered, what, edit, stage,
                                                             message):
    """Each bad value, at the stage command that reads it: exit non-zero, the key named, and
    nothing written (no data, model, MLflow store, sweep storage or results)."""
    path = study_params(tmp_path, tiny_data, tracking_store=False, study={"protocol": "finetune"})
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    dataset = params.get("study", {}).get("datasets", ["synthetic_voc"])[-1]
    assert stage_main(stage, dataset, path) != 0
    said = capsys.readouterr().err
    assert message in said, said[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # nothing written
    covered("bad inputs tried", f"params.yaml {what}: {message}")


def test_bad_params_under_dvc_repro_lose_nothing(study, covered):
    """End to end, once: `dvc repro` of a finished study with a bad value fails naming it, and
    nothing is trained, rewritten or recorded as done."""
    lock = (study / "dvc.lock").read_text()
    trials, result = summaries(study), results(study)
    model = (study / "models/pretrain/synthetic_voc/model.pth").stat().st_mtime_ns
    with params_edited(study, _set("sweep.losses", ["ce", "focal"])):
        done = dvc(study, "repro")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "unknown loss 'focal'" in output, output[-3000:]
    assert summaries(study) == trials
    assert results(study) == result
    assert (study / "dvc.lock").read_text() == lock
    assert (study / "models/pretrain/synthetic_voc/model.pth").stat().st_mtime_ns == model
    covered("bad inputs tried", "params.yaml unknown loss, under dvc repro")


@pytest.mark.parametrize("text, message", [
    ("sweeps: {seeds: [0]}\n", "unknown section 'sweeps'"),
    ("study: [unclosed\n", "not valid YAML"),
    ("- a list\n", "the top level must be a mapping"),
])
def test_a_params_file_no_stage_can_read_is_named(tmp_path, covered, text, message):
    # No stage depends on a section it does not know, so `dvc repro` would not even run one:
    # every stage's loader checks the whole file's shape first.
    from pipeline.params import ParamsError, load_params

    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(path) in str(error.value) and message in str(error.value)
    covered("bad inputs tried", f"params.yaml {message}")


def test_a_dataset_file_corrupted_after_the_data_stage_is_noticed_and_restored(study, covered):
    labels = sorted((study / "data/synthetic_voc").rglob("SegmentationClassAug/*.png"))
    victim = labels[0]
    original = victim.read_bytes()
    trials = summaries(study)
    victim.write_bytes(original[:64] + b"\0" * 256)  # a truncated, garbled PNG

    status = dvc(study, "status", check=True).stdout
    assert "data@synthetic_voc" in status and "modified" in status, status
    done = dvc(study, "repro", check=True)
    assert "data@synthetic_voc" in done.stdout
    assert victim.read_bytes() == original  # redone (or checked out) from DVC, not trained on
    assert summaries(study) == trials  # same content hash: the trials stand
    assert "up to date" in dvc(study, "status", check=True).stdout
    covered("faults injected", "a label PNG of the built dataset corrupted after the data stage")
