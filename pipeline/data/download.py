"""Verified, resumable downloads: pooch checks hashes and caches, our downloader resumes.

pooch (`pooch.retrieve`) owns the cache and the verification: a file whose hash matches is never
fetched again, and one that does not match is deleted before anyone extracts it. pooch's own
HTTP downloader restarts from zero after a dropped connection, which is costly for the 2 GB VOC
tar and the 11 GB Cityscapes zip, so `ResumableDownloader` is plugged in as its downloader: it
keeps the bytes received in a `.part` file beside the cache, asks for the rest with an HTTP
Range request, retries transient failures with exponential backoff, and shows a progress bar.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

import pooch
import requests
from tqdm import tqdm

from ..retry import with_backoff

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # a dropped connection loses at most the chunk being read
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download that failed for good: wrong address, refused, out of retries, bad hash."""


class ResumableDownloader:
    """pooch downloader: resume with HTTP Range, retry with backoff, progress on stderr."""

    def __init__(self, session: requests.Session | None = None, retries: int = 5,
                 backoff_seconds: float = 2.0, timeout: float = 60.0):
        self.session = session or requests.Session()
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout = timeout

    @staticmethod
    def partial_path(url: str, output_file: str | Path) -> Path:
        """A stable name for the bytes received so far (pooch's output name is random)."""
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        return Path(output_file).parent / f".{digest}.part"

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        if check_only:
            response = self.session.head(url, allow_redirects=True, timeout=self.timeout)
            return response.status_code == 200
        partial = self.partial_path(url, output_file)
        transient = (requests.ConnectionError, requests.Timeout,
                     requests.exceptions.ChunkedEncodingError, _Transient)
        try:  # each attempt resumes where the last one stopped (HTTP Range)
            with_backoff(lambda: self._fetch(url, partial), url, attempts=self.retries + 1,
                         first_wait_s=self.backoff_seconds, retry_on=transient,
                         log=log.warning)
        except transient as error:
            kept = partial.stat().st_size if partial.exists() else 0
            raise DownloadError(f"{url}: gave up after {self.retries + 1} attempts ({error}); "
                                f"the {kept} bytes received are kept in {partial} for the next "
                                "run") from error
        shutil.move(partial, output_file)

    def _fetch(self, url: str, partial: Path) -> None:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.session.get(url, headers=headers, stream=True, timeout=self.timeout,
                              allow_redirects=True) as response:
            if response.status_code == 416 and have:  # nothing left to fetch
                return
            if response.status_code in TRANSIENT_STATUS:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code not in (200, 206):
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
            if response.status_code == 200 and have:
                log.warning("%s: the server ignored the Range request; starting over", url)
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with partial.open("ab" if have else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=Path(url.split("?")[0]).name or url, file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 10.0) as progress:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
            if total is not None and partial.stat().st_size < total:
                raise _Transient(f"connection closed at {partial.stat().st_size} of {total} bytes")


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, a body shorter than announced)."""


def fetch(url: str, known_hash: str | None, directory: Path, fname: str,
          downloader: ResumableDownloader) -> Path:
    """The verified local copy of `url` in `directory` (downloaded or resumed only if needed).

    known_hash: 'md5:...' or 'sha256:...' (the published checksum), or None to accept any file
    and log its sha256. A mismatch deletes the download and raises DownloadError.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=fname, path=directory,
                              downloader=downloader, progressbar=False)
    except ValueError as error:
        if "hash" not in str(error).lower():
            raise
        raise DownloadError(f"{fname}: checksum mismatch, the download from {url} is corrupt "
                            f"and was deleted; nothing was extracted. Expected {known_hash}. "
                            f"Run the stage again to download it afresh.") from error
    return Path(path)


def file_hash(path: Path, algorithm: str = "md5") -> str:
    return f"{algorithm}:{pooch.file_hash(str(path), alg=algorithm)}"
