"""The dataset on every node a trial runs on, the exact version its key was computed from.

Two sources (params.yaml `sweep.data.source`):

- `path`: the trials read `<path>/<dataset>` (`sweep.data.path`, else `data.root`), a folder
  that every node sees (the machine itself, or a shared mount on a cluster).
- `dvc`: each node pulls the data stage's output, at the version dvc.lock records, from a DVC
  remote (`dvc remote add`, e.g. on S3) into a node-local cache, once per node and version,
  under a file lock. Credentials come from the nodes' environment (AWS_* variables), never
  from the trial's config.

Either way the trial compares the manifest's content hash with the one in its key before it
trains, so a node that sees other data fails the trial by name instead of training on it.
"""
from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.validate import manifest_hash
from ..params import ParamsError

#: Remote options that may hold credentials: they stay in the nodes' own DVC/AWS settings.
SECRET_OPTION = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


class DatasetMismatch(RuntimeError):
    """A node's dataset is not the version that the trial was keyed for."""


@dataclass(frozen=True)
class DatasetVersion:
    """What a trial needs to find its dataset on any node (it travels in the trial's config)."""

    dataset: str
    content_sha256: str  # manifest.json's: part of the trial key
    source: str
    path: str | None = None  # source 'path': the folder holding <dataset>/
    dvc_md5: str | None = None  # source 'dvc': dvc.lock's hash of data/<dataset>
    remote: dict | None = None  # source 'dvc': url and non-secret options of the remote
    cache: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def locked_output(stage: str, path: Path, lock_file: Path = Path("dvc.lock")) -> str:
    """dvc.lock's hash of `path`, an output of `stage` (what `dvc push` sent to the remote)."""
    if not lock_file.is_file():
        raise ParamsError(f"sweep.data.source is 'dvc' but {lock_file} is missing: run "
                          f"`dvc repro {stage}` and `dvc push` first")
    lock = yaml.safe_load(lock_file.read_text()) or {}
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if Path(out["path"]) == Path(path):
            return out["md5"]
    raise ParamsError(f"{lock_file} records no output {path} of stage {stage}: run "
                      f"`dvc repro {stage}` and `dvc push`")


def remote_settings(name: str | None, repo_root: Path = Path(".")) -> dict:
    """The DVC remote `name` (or the default one) of the project: its url and options, without
    the ones that may hold credentials."""
    from dvc.repo import Repo

    config = Repo(str(repo_root), uninitialized=True).config
    # What the project's config files say (not DVC's defaults), the local file over the repo's.
    remotes, core = {}, {}
    for level in ("repo", "local"):
        written = config.read(level)
        core.update(written.get("core", {}))
        for name, options in written.get("remote", {}).items():
            remotes.setdefault(name, {}).update(options)
    name = name or core.get("remote")
    if not name or name not in remotes:
        known = ", ".join(remotes) or "none"
        raise ParamsError(f"params.yaml: sweep.data.remote: no DVC remote "
                          f"{'named ' + repr(name) if name else '(and no default)'} in "
                          f".dvc/config (remotes: {known}); add one with `dvc remote add -d "
                          f"storage s3://bucket/dvc`")
    return {k: v for k, v in remotes[name].items() if not SECRET_OPTION.search(k)}


def verify(folder: Path, version: DatasetVersion) -> Path:
    """`folder` (a dataset) is the version of the trial key, or DatasetMismatch naming both."""
    found = manifest_hash(folder)
    if found != version.content_sha256:
        what = f"has content sha256 {found[:12]}" if found else "has no manifest.json"
        raise DatasetMismatch(
            f"node {socket.gethostname()}: {folder} {what}, but the trial was keyed for "
            f"{version.dataset} {version.content_sha256[:12]}. The nodes do not see the same "
            f"dataset: point sweep.data.path at a folder every node shares, or use "
            f"sweep.data.source: dvc")
    return folder


def stage_from_remote(version: DatasetVersion) -> Path:
    """Pull `version` from its DVC remote into this node's cache, once; the dataset folder."""
    return pull_locked(version.dataset, version.dvc_md5, version.remote, version.cache)


def pull_locked(name: str, md5: str, remote: dict, cache: str) -> Path:
    """The DVC-tracked folder `name` at hash `md5`, pulled from `remote` into this node's
    `cache` once (under a file lock); its path.

    A no-SCM DVC repo in the cache holds one `.dvc` file per version: DVC fetches and checks
    out exactly that hash, verifying its objects, and a second trial on the node finds it done.
    The copy is not trusted forever: `.complete` lists every file with its size, and a later
    trial that finds one missing or of another size (a disk cleaned, a copy cut short) has DVC
    pull and check out the version again, restoring what changed.
    """
    from filelock import FileLock

    cache_dir = Path(cache).expanduser()
    folder = cache_dir / f"{name}-{md5.removesuffix('.dir')}"
    done = folder / ".complete"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        listing = _listing(done)
        if listing is None or not _intact(folder / name, listing):
            _pull(name, md5, remote, folder, force=listing is not None)
            done.write_text(json.dumps(_sizes(folder / name)))
    return folder / name


def _sizes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_size
            for path in sorted(root.rglob("*")) if path.is_file()}


def _listing(done: Path) -> dict[str, int] | None:
    try:
        return json.loads(done.read_text())
    except (OSError, ValueError):  # none yet, or an empty marker of an older version
        return None


def _intact(root: Path, listing: dict[str, int]) -> bool:
    """Every file the pull left is there with its size (a stat each: cheap at any size)."""
    for relative, size in listing.items():
        try:
            if (root / relative).stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(listing)


def _pull(name: str, md5: str, remote: dict, folder: Path, force: bool = False) -> None:
    from dvc.repo import Repo

    if not (folder / ".dvc").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        Repo.init(str(folder), no_scm=True, force=True)
    # verify: DVC recomputes the hash of every object it pulls
    remote = {**remote, "verify": "true"}
    options = "".join(f"    {k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                      for k, v in remote.items())
    (folder / ".dvc" / "config").write_text(
        "[core]\n    no_scm = true\n    remote = origin\n    analytics = false\n"
        "    check_update = false\n"
        f"['remote \"origin\"']\n{options}")
    pointer = folder / f"{name}.dvc"
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": name, "hash": "md5"}]}))
    try:
        Repo(str(folder)).pull(targets=[str(pointer)], force=force)
    except Exception as error:  # noqa: BLE001 - DVC's errors say what failed; add where
        raise DatasetMismatch(f"node {socket.gethostname()}: could not pull {name} {md5} from "
                              f"the DVC remote {remote.get('url')} ({type(error).__name__}: "
                              f"{error}). Was it pushed (`dvc push`)?") from None


def dataset_folder(version: DatasetVersion) -> Path:
    """The verified dataset folder of `version` on this node (pulled first if from DVC)."""
    if version.source == "dvc":
        return verify(stage_from_remote(version), version)
    return verify(Path(version.path) / version.dataset, version)
