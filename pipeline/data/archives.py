"""Safe archive extraction (datasets are built in atomic folders: pipeline/files.py).

Every member is checked before anything is written: absolute paths, `..` components and links
(or, in a tar, devices) that would land outside the target are refused. Datasets are built in a
temporary sibling folder and renamed into place only once complete and validated, so a failure
never leaves a half-written dataset behind.
"""
from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the extraction folder."""


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive.name}: member '{name}' has an absolute path; "
                                 "refusing to extract")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive.name}: member '{name}' escapes the target folder "
                                 "with '..'; refusing to extract")


def extract(archive: Path, target: Path, members: str | tuple[str, ...] | None = None) -> None:
    """Extract `archive` (tar, tar.gz, zip) into `target`, refusing unsafe members.

    members: only extract names starting with this prefix, or one of these (e.g. 'gtFine/');
    None for all. Every member is checked, extracted or not.
    """
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member_name(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"{archive.name}: member '{info.filename}' is a "
                                             "symbolic link; refusing to extract")
            zf.extractall(target, members=[i for i in infos if _wanted(i.filename, members)])
        return
    with tarfile.open(archive) as tf:
        infos = tf.getmembers()
        for info in infos:  # all checked before the first byte is written
            _check_member_name(archive, info.name)
            try:
                tarfile.data_filter(info, str(target))
            except tarfile.FilterError as error:
                raise UnsafeArchiveError(f"{archive.name}: member '{info.name}' refused: "
                                         f"{error}") from error
        tf.extractall(target, members=[m for m in infos if _wanted(m.name, members)],
                      filter="data")


def _wanted(name: str, members: str | tuple[str, ...] | None) -> bool:
    return members is None or name.startswith(members)
