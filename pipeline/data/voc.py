"""Pascal VOC 2012 + SBD into the VOC-aug layout (what mmseg's voc_aug converter produces).

VOC's SegmentationClass PNGs (palette indices, 255 on borders) and SBD's cls/*.mat
(GTcls.Segmentation) become SegmentationClassAug/<id>.png; the train_aug split is SBD train +
SBD val + VOC train minus VOC val (10,582 images), and VOC val (1,449) is left as it is.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from .archives import extract
from .download import ResumableDownloader, fetch
from .layouts import VOC_AUG


@dataclass
class VOCParams:
    """params.yaml: datasets.voc."""

    voc_url: str
    voc_md5: str
    sbd_url: str
    sbd_md5: str
    expected: dict[str, int]


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_voc_aug(params: VOCParams, downloads: Path, root: Path,
                  downloader: ResumableDownloader) -> None:
    """Fetch (or reuse) the verified archives and write the VOC-aug layout under `root`."""
    voc_tar = fetch(params.voc_url, f"md5:{params.voc_md5}", downloads,
                    Path(params.voc_url).name, downloader)
    sbd_tgz = fetch(params.sbd_url, f"md5:{params.sbd_md5}", downloads,
                    Path(params.sbd_url).name, downloader)

    print(f"extracting {voc_tar.name}", flush=True)
    extract(voc_tar, root, members="VOCdevkit/VOC2012/")
    voc = VOC_AUG.voc_root(root)
    for unused in ("Annotations", "SegmentationObject", "ImageSets/Main", "ImageSets/Action",
                   "ImageSets/Layout"):  # detection and action data the study never reads
        shutil.rmtree(voc / unused, ignore_errors=True)

    scratch = root / ".sbd"
    print(f"extracting {sbd_tgz.name}", flush=True)
    extract(sbd_tgz, scratch, members="benchmark_RELEASE/dataset/")
    sbd = scratch / "benchmark_RELEASE" / "dataset"

    aug = voc / "SegmentationClassAug"
    aug.mkdir(exist_ok=True)
    sbd_ids = _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt")
    for image_id in tqdm(sorted(set(sbd_ids)), desc="SBD .mat -> png", unit="img",
                         mininterval=5.0):
        mat = scipy.io.loadmat(sbd / "cls" / f"{image_id}.mat")
        mask = mat["GTcls"][0]["Segmentation"][0].astype(np.uint8)
        Image.fromarray(mask).save(aug / f"{image_id}.png")
    # VOC's own masks take precedence where both exist (they carry the 255 borders)
    for png in tqdm(sorted((voc / "SegmentationClass").glob("*.png")), desc="VOC masks",
                    unit="img", mininterval=5.0):
        with Image.open(png) as image:
            Image.fromarray(np.asarray(image).astype(np.uint8)).save(aug / png.name)

    splits = voc / "ImageSets" / "Segmentation"
    voc_val = set(_read_ids(splits / "val.txt"))
    train_aug = sorted((set(sbd_ids) | set(_read_ids(splits / "train.txt"))) - voc_val)
    (splits / "train_aug.txt").write_text("\n".join(train_aug) + "\n")
    shutil.rmtree(scratch)
