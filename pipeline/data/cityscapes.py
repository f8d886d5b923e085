"""Cityscapes (gtFine + leftImg8bit, train/val) with labelTrainIds, as mmseg reads it.

The archives need a registered account. Credentials come only from the environment
(CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD) and never reach a file or a log; the login and the
md5 checksums follow the official downloader (cityscapesscripts.download). Archives already
downloaded can be given instead (datasets.cityscapes.archives_dir). Label ids become train ids
with the official table (cityscapesscripts.helpers.labels): 19 classes, 255 ignore.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image
from tqdm import tqdm

from .archives import extract
from .download import DownloadError, ResumableDownloader, fetch
from .layouts import CITYSCAPES, IGNORE_INDEX

USERNAME_VARIABLE, PASSWORD_VARIABLE = "CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"
MISSING_CREDENTIALS = (
    "Cityscapes needs a registered account (https://www.cityscapes-dataset.com/register/). "
    f"Either set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE} in the environment, or download "
    "{archives} yourself and set datasets.cityscapes.archives_dir in params.yaml to their folder.")


@dataclass
class CityscapesParams:
    """params.yaml: datasets.cityscapes."""

    base_url: str
    # archive name without '.zip' -> the server's packageID (no dot in a params key: `dvc exp
    # run -S datasets.cityscapes.packages.gtFine_trainvaltest=1` must reach it)
    packages: dict[str, int]
    expected: dict[str, int]
    archives_dir: str | None = None

    @property
    def archives(self) -> dict[str, int]:
        """Archive file name -> packageID."""
        return {f"{name}.zip": package for name, package in self.packages.items()}


class MissingCredentials(RuntimeError):
    pass


def check_access(params: CityscapesParams) -> tuple[str, str] | None:
    """Fail at once, before any work, when neither credentials nor archives are there.

    Returns (username, password) when they are needed, None when archives_dir is used.
    """
    if params.archives_dir:
        folder = Path(params.archives_dir)
        missing = [name for name in params.archives if not (folder / name).is_file()]
        if missing:
            raise MissingCredentials(f"datasets.cityscapes.archives_dir is {folder}, but it "
                                     f"lacks {', '.join(missing)}")
        return None
    username, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if not username or not password:
        raise MissingCredentials(MISSING_CREDENTIALS.format(archives=" and ".join(params.archives)))
    return username, password


def login(base_url: str, username: str, password: str) -> requests.Session:
    """A session logged in to the Cityscapes site (a 302 answer means success)."""
    session = requests.Session()
    session.get(f"{base_url}/login", allow_redirects=False, timeout=60).raise_for_status()
    response = session.post(f"{base_url}/login", allow_redirects=False, timeout=60,
                            data={"username": username, "password": password, "submit": "Login"})
    response.raise_for_status()
    if response.status_code != 302:
        raise DownloadError(f"Cityscapes refused the login of {USERNAME_VARIABLE}: check "
                            f"{USERNAME_VARIABLE} and {PASSWORD_VARIABLE}")
    return session


def obtain_archives(params: CityscapesParams, downloads: Path, retries: int,
                    backoff_seconds: float) -> dict[str, Path]:
    credentials = check_access(params)
    if credentials is None:
        return {name: Path(params.archives_dir) / name for name in params.archives}
    session = login(params.base_url, *credentials)
    downloader = ResumableDownloader(session, retries, backoff_seconds)
    paths = {}
    for name, package_id in params.archives.items():
        md5 = session.get(f"{params.base_url}/md5-sum/?packageID={package_id}",
                          allow_redirects=False, timeout=60)
        md5.raise_for_status()
        paths[name] = fetch(f"{params.base_url}/file-handling/?packageID={package_id}",
                            f"md5:{md5.text.split()[0]}", downloads, name, downloader)
    return paths


def train_id_table() -> np.ndarray:
    """uint8 lookup: label id -> train id (255 for ignored and unlisted ids)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < len(CITYSCAPES.classes):
            table[label.id] = label.trainId
    return table


def build_cityscapes(params: CityscapesParams, downloads: Path, root: Path, retries: int,
                     backoff_seconds: float) -> None:
    archives = obtain_archives(params, downloads, retries, backoff_seconds)
    splits = CITYSCAPES.splits
    for name, path in archives.items():
        print(f"extracting {name}", flush=True)
        extract(path, root, members=tuple(f"{top}/{split}/" for top in ("gtFine", "leftImg8bit")
                                          for split in splits))
    table = train_id_table()
    for split in splits:
        for label_ids in tqdm(sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png")),
                              desc=f"labelTrainIds {split}", unit="img", mininterval=5.0):
            with Image.open(label_ids) as image:
                train_ids = table[np.asarray(image)]
            stem = label_ids.name[: -len("_gtFine_labelIds.png")]
            Image.fromarray(train_ids).save(
                CITYSCAPES.label(root, split, label_ids.parent.name, stem))
        for other in (root / "gtFine" / split).glob("*/*"):  # colour, instance ids, polygons
            if not other.name.endswith(CITYSCAPES.LABEL_SUFFIX):
                other.unlink()
