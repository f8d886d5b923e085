"""Bad params.yaml and a corrupted dataset, met by `dvc repro` on a finished study."""
from __future__ import annotations

import contextlib

import pytest
import yaml

from tests.conftest import dvc

from .conftest import results, summaries

pytestmark = pytest.mark.slow


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


BAD_PARAMS = [
    ("unknown key", _set("sweep.seed", [0]), "unknown key 'sweep.seed'"),
    ("unknown key (report)", _set("report.confidense", 0.9), "unknown key 'report.confidense'"),
    ("wrong type", _set("sweep.seeds", "0,1"), "sweep.seeds: expected a list"),
    ("wrong type (number)", _set("train.iterations", "many"), "train.iterations"),
    ("unknown loss", _set("sweep.losses", ["ce", "focal"]), "unknown loss 'focal'"),
    ("unknown dataset", _set("study.datasets", ["synthetic_voc", "imagenet"]), "imagenet"),
    ("missing section", _delete("sweep"), "sweep"),
    ("pretrain iterations", _set("pretrain.iterations", 0), "pretrain.iterations must be >= 1"),
    ("pretrain interval", _set("pretrain.val_interval", 100),
     "pretrain.val_interval (100) is longer than pretrain.iterations"),
    ("pretrain checkpoint hash", _set("pretrain.published.voc.sha256", "c7ff"),
     "pretrain.published.voc.sha256 must be the file's sha256"),
    ("unknown protocol", _set("study.protocol", "fine-tune"), "study.protocol must be one of"),
]


@pytest.mark.parametrize("what, edit, message", BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS])
def test_bad_params_fail_before_any_work_naming_the_key(study, covered, what, edit, message):
    lock = (study / "dvc.lock").read_text()
    trials, result = summaries(study), results(study)
    model = (study / "models/pretrain/synthetic_voc/model.pth").stat().st_mtime_ns
    with params_edited(study, edit):
        done = dvc(study, "repro")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert message in output, output[-3000:]
    # Nothing was trained, rewritten or recorded as done.
    assert summaries(study) == trials
    assert results(study) == result
    assert (study / "dvc.lock").read_text() == lock
    assert (study / "models/pretrain/synthetic_voc/model.pth").stat().st_mtime_ns == model
    covered("bad inputs tried", f"params.yaml {what}: {message}")


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
