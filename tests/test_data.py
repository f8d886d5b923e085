"""Data stages: fetch -> verify -> extract -> convert -> validate, against a local server."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data.__main__ import run
from pipeline.data.archives import UnsafeArchiveError, extract
from pipeline.data.cityscapes import MISSING_CREDENTIALS, MissingCredentials, train_id_table
from pipeline.data.download import DownloadError, ResumableDownloader, fetch
from pipeline.data.layouts import CITYSCAPES, VOC_AUG
from pipeline.data.validate import DatasetError, validate
from pipeline.params import ParamsError
from tests import archive_server as fake
from tests.conftest import dvc, project_copy

ROOT = Path(__file__).resolve().parent.parent
ENV_CREDENTIALS = ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def voc_files():
    return fake.voc_archives()


@pytest.fixture(scope="module")
def cityscapes_files():
    return fake.cityscapes_archives()


def write_params(tmp_path: Path, datasets: dict, retries: int = 2) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = dict(root=str(tmp_path / "data"), downloads=str(tmp_path / "downloads"),
                          retries=retries, backoff_seconds=0.01)
    params["datasets"].update(datasets)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def voc_params(server, voc_tar: bytes, sbd_tgz: bytes, **overrides) -> dict:
    spec = dict(voc_url=f"{server.url}/files/VOCtrainval_11-May-2012.tar", voc_md5=md5(voc_tar),
                sbd_url=f"{server.url}/files/benchmark.tgz", sbd_md5=md5(sbd_tgz),
                expected=dict(train_aug=len(fake.EXPECTED_TRAIN_AUG), val=len(fake.VOC_VAL)))
    spec.update(overrides)
    return {"voc": spec}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_voc_fetch_verify_extract_convert_validate(tmp_path, voc_files):
    voc_tar, sbd_tgz, expected = voc_files
    with fake.ArchiveServer({"VOCtrainval_11-May-2012.tar": voc_tar,
                             "benchmark.tgz": sbd_tgz}) as server:
        params = write_params(tmp_path, voc_params(server, voc_tar, sbd_tgz))
        manifest = run("voc", params)
        root = tmp_path / "data" / "voc"
        splits = VOC_AUG.split_file(root, "train_aug").parent
        assert (splits / "train_aug.txt").read_text().split() == fake.EXPECTED_TRAIN_AUG
        assert (splits / "val.txt").read_text().split() == fake.VOC_VAL
        for image_id in fake.EXPECTED_TRAIN_AUG + fake.VOC_VAL:
            label = np.asarray(Image.open(VOC_AUG.label(root, image_id)))
            assert np.array_equal(label, expected[image_id]), image_id
        assert not (VOC_AUG.voc_root(root) / "Annotations").exists()
        assert manifest["counts"] == {"train_aug": len(fake.EXPECTED_TRAIN_AUG), "val": 2}
        assert (root / "manifest.json").is_file()
        assert leftovers(tmp_path / "data") == ["voc"]  # no staging folder left

        # a rerun uses the verified archives: no second download
        downloads = [r for r in server.requests if r[1].startswith("/files/")]
        run("voc", params)
        assert [r for r in server.requests if r[1].startswith("/files/")] == downloads


def test_corrupted_archive_is_deleted_and_nothing_extracted(tmp_path, voc_files):
    voc_tar, sbd_tgz, _ = voc_files
    corrupted = bytearray(voc_tar)
    corrupted[len(corrupted) // 2] ^= 0xFF
    with fake.ArchiveServer({"VOCtrainval_11-May-2012.tar": bytes(corrupted),
                             "benchmark.tgz": sbd_tgz}) as server:
        params = write_params(tmp_path, voc_params(server, voc_tar, sbd_tgz))
        with pytest.raises(DownloadError, match="VOCtrainval_11-May-2012.tar: checksum "
                                                "mismatch.*nothing was extracted"):
            run("voc", params)
    assert leftovers(tmp_path / "data") == []
    assert leftovers(tmp_path / "downloads") == []


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    payload = os.urandom(300_000)
    with fake.ArchiveServer({"big.tar": payload}) as server:
        server.drop_once.add("big.tar")
        path = fetch(f"{server.url}/files/big.tar", f"md5:{md5(payload)}", tmp_path, "big.tar",
                     ResumableDownloader(retries=3, backoff_seconds=0.01))
        assert path.read_bytes() == payload
        gets = [(path_, rng) for method, path_, rng in server.requests if method == "GET"]
    assert len(gets) == 2
    assert gets[0][1] is None
    resumed_at = int(gets[1][1].removeprefix("bytes=").removesuffix("-"))
    assert len(payload) // 4 <= resumed_at <= len(payload) // 2  # what had arrived was kept
    assert not list(tmp_path.glob(".*.part"))


def test_partial_download_survives_a_failed_run(tmp_path):
    payload = os.urandom(400_000)
    with fake.ArchiveServer({"big.tar": payload}) as server:
        server.drop_once.add("big.tar")
        with pytest.raises(DownloadError, match="gave up after 1 attempts"):
            fetch(f"{server.url}/files/big.tar", f"md5:{md5(payload)}", tmp_path, "big.tar",
                  ResumableDownloader(retries=0, backoff_seconds=0.01))
        (partial,) = tmp_path.glob(".*.part")
        kept = partial.stat().st_size
        assert len(payload) // 4 <= kept <= len(payload) // 2
        fetch(f"{server.url}/files/big.tar", f"md5:{md5(payload)}", tmp_path, "big.tar",
              ResumableDownloader(retries=0))
        assert server.requests[-1][2] == f"bytes={kept}-"
    assert (tmp_path / "big.tar").read_bytes() == payload


@pytest.mark.parametrize("archive,name", [(fake.evil_tar, "evil.tar"),
                                          (fake.evil_zip, "evil.zip")])
def test_members_escaping_the_target_are_refused(tmp_path, archive, name):
    path = tmp_path / name
    path.write_bytes(archive())
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="refus"):
        extract(path, target)
    assert leftovers(target) == []  # checked before anything was written
    assert not (tmp_path / "escaped.txt").exists()


def test_cityscapes_without_credentials_fails_at_once_with_the_exact_message(tmp_path,
                                                                              monkeypatch):
    for name in ENV_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    params = write_params(tmp_path, {})
    expected = MISSING_CREDENTIALS.format(
        archives="gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip")
    with pytest.raises(MissingCredentials) as error:
        run("cityscapes", params)
    assert str(error.value) == expected
    assert leftovers(tmp_path / "data") == []

    env = {k: v for k, v in os.environ.items() if k not in ENV_CREDENTIALS}
    cli = subprocess.run([sys.executable, "-m", "pipeline.data", "cityscapes", "--params",
                          str(params)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert cli.returncode == 1
    assert cli.stderr.strip() == f"error: data@cityscapes: {expected}"


def test_cityscapes_login_download_and_train_ids(tmp_path, monkeypatch, cityscapes_files):
    gt_zip, image_zip, label_ids = cityscapes_files
    monkeypatch.setenv("CITYSCAPES_USERNAME", fake.USERNAME)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", fake.PASSWORD)
    files = {"gtFine_trainvaltest.zip": gt_zip, "leftImg8bit_trainvaltest.zip": image_zip}
    with fake.ArchiveServer(files, {1: "gtFine_trainvaltest.zip",
                                    3: "leftImg8bit_trainvaltest.zip"}) as server:
        spec = dict(base_url=server.url, archives_dir=None,
                    packages={"gtFine_trainvaltest": 1, "leftImg8bit_trainvaltest": 3},
                    expected=dict(train=3, val=2))
        manifest = run("cityscapes", write_params(tmp_path, {"cityscapes": spec}))
        assert ("POST", "/login", None) in server.requests
    root = tmp_path / "data" / "cityscapes"
    table = train_id_table()
    assert table[7] == 0 and table[26] == 13 and table[0] == 255  # road, car, unlabeled
    for split in ("train", "val"):
        for stem in fake.CITYSCAPES_SPLITS[split]:
            city = stem.split("_")[0]
            label = np.asarray(Image.open(CITYSCAPES.label(root, split, city, stem)))
            assert np.array_equal(label, table[label_ids[stem]])
    assert manifest["counts"] == {"train": 3, "val": 2}
    assert not (root / "gtFine" / "test").exists()
    assert not list(root.glob("gtFine/*/*/*_color.png"))


def test_cityscapes_from_archives_the_user_downloaded(tmp_path, monkeypatch, cityscapes_files):
    gt_zip, image_zip, _ = cityscapes_files
    for name in ENV_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    archives = tmp_path / "mine"
    archives.mkdir()
    (archives / "gtFine_trainvaltest.zip").write_bytes(gt_zip)
    spec = dict(base_url="http://127.0.0.1:9", archives_dir=str(archives),
                packages={"gtFine_trainvaltest": 1, "leftImg8bit_trainvaltest": 3},
                expected=dict(train=3, val=2))
    params = write_params(tmp_path, {"cityscapes": spec})
    with pytest.raises(MissingCredentials, match="lacks leftImg8bit_trainvaltest.zip"):
        run("cityscapes", params)
    (archives / "leftImg8bit_trainvaltest.zip").write_bytes(image_zip)
    assert run("cityscapes", params)["counts"] == {"train": 3, "val": 2}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Both generated datasets, small, built by the stage itself."""
    tmp_path = tmp_path_factory.mktemp("synthetic")
    small = dict(train=8, val=4, objects_per_image=[3, 8], imbalance=1.0)
    params = write_params(tmp_path, {
        "synthetic_voc": dict(seed=0, height=64, width=64, **small),
        "synthetic_cityscapes": dict(seed=1, height=64, width=128, **small)})
    run("synthetic_voc", params)
    run("synthetic_cityscapes", params)
    return tmp_path / "data"


def test_generated_datasets_are_deterministic_and_imbalanced(synthetic, tmp_path):
    manifest = validate(VOC_AUG, synthetic / "synthetic_voc")
    params = write_params(tmp_path, {"synthetic_voc": dict(
        seed=0, height=64, width=64, train=8, val=4, objects_per_image=[3, 8], imbalance=1.0)})
    again = run("synthetic_voc", params)
    assert again["content_sha256"] == manifest["content_sha256"]
    pixels = np.array(list(manifest["class_pixels"].values()))
    assert (pixels > 0).sum() >= 8  # many classes present
    assert pixels[0] > 0.4 * pixels.sum()  # background dominates, as in VOC
    assert manifest["ignored_pixels"] > 0  # VOC-style ignored borders


@pytest.mark.parametrize("config,key,dataset_type,layout", [
    ("synthetic_voc.py", "synthetic_voc", "PascalVOCDataset", VOC_AUG),
    ("synthetic_cityscapes.py", "synthetic_cityscapes", "CityscapesDataset", CITYSCAPES),
])
def test_generated_datasets_load_with_the_configs_pipelines(synthetic, config, key,
                                                            dataset_type, layout):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(ROOT / "mmseg_configs" / "_base_" / "datasets" / config))
    datasets = {}
    for split in ("train", "val"):
        spec = cfg[f"{split}_dataloader"]["dataset"]
        assert spec["type"] == dataset_type  # mmseg's own dataset class
        spec["data_root"] = spec["data_root"].replace("data/" + key, str(synthetic / key))
        datasets[split] = DATASETS.build(spec)
    assert (len(datasets["train"]), len(datasets["val"])) == (8, 4)

    train = datasets["train"][0]  # through RandomResize / RandomCrop / flip / photometric
    label = train["data_samples"].gt_sem_seg.data[0]
    assert train["inputs"].shape[1:] == label.shape
    assert set(label.unique().tolist()) <= set(range(layout.num_classes)) | {255}
    val = datasets["val"][0]  # labels are loaded after the resize: compared as on disk
    on_disk = np.asarray(Image.open(val["data_samples"].seg_map_path))
    assert np.array_equal(val["data_samples"].gt_sem_seg.data[0].numpy(), on_disk)


@pytest.mark.parametrize("damage,message", [
    ("value", r"label values \[30\] outside \[0, 21\)"),
    ("missing", "missing"),
    ("size", "differs from its image"),
])
def test_validation_names_the_first_bad_file(synthetic, tmp_path, damage, message):
    root = tmp_path / "voc"
    shutil.copytree(synthetic / "synthetic_voc", root)
    image_id = VOC_AUG.split_file(root, "val").read_text().split()[1]
    label_path = VOC_AUG.label(root, image_id)
    if damage == "value":
        label = np.asarray(Image.open(label_path)).copy()
        label[5, 5] = 30
        Image.fromarray(label).save(label_path)
    elif damage == "missing":
        label_path.unlink()
    else:
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(label_path)
    with pytest.raises(DatasetError, match=message) as error:
        validate(VOC_AUG, root)
    assert image_id in str(error.value)


@pytest.mark.parametrize("section,key,value,message", [
    ("synthetic_voc", "sead", 1, r"unknown key 'datasets\.synthetic_voc\.sead'"),
    ("synthetic_voc", "train", "many", r"datasets\.synthetic_voc\.train: expected int"),
    ("synthetic_voc", "objects_per_image", [5, 2], r"objects_per_image must be \[min, max\]"),
])
def test_bad_params_fail_before_any_work_naming_the_key(tmp_path, section, key, value, message):
    spec = yaml.safe_load((ROOT / "params.yaml").read_text())["datasets"][section]
    spec[key] = value
    with pytest.raises(ParamsError, match=message):
        run(section, write_params(tmp_path, {section: spec}))
    assert leftovers(tmp_path / "data") == []


@pytest.mark.slow
def test_dvc_repro_builds_a_dataset_and_then_does_nothing(tmp_path):
    repo = project_copy(tmp_path / "repo", lambda params: params["datasets"]["synthetic_voc"]
                        .update(train=6, val=3, height=48, width=48))

    dvc(repo, "repro", "data@synthetic_voc", check=True)
    manifest = repo / "data" / "synthetic_voc" / "manifest.json"
    assert '"train_aug": 6' in manifest.read_text()
    built = manifest.stat().st_mtime_ns

    second = dvc(repo, "repro", "data@synthetic_voc", check=True)
    assert "didn't change, skipping" in second.stdout
    assert manifest.stat().st_mtime_ns == built
    assert "data@synthetic_voc" in (repo / "dvc.lock").read_text()
