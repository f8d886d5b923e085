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

import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.validate import manifest_hash
from ..params import ParamsError
from ..secret_names import is_secret


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
    # credentials stay in each node's own DVC/AWS settings
    return {k: v for k, v in remotes[name].items() if not is_secret(k)}


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


def stage_from_remote(version: DatasetVersion, check: str | None = None) -> Path:
    """Pull `version` from its DVC remote into this node's cache, once; the dataset folder.
    `check` names a use that hashes every file again (see `pull_locked`)."""
    return pull_locked(version.dataset, version.dvc_md5, version.remote, version.cache, check)


def pull_locked(name: str, md5: str, remote: dict, cache: str, check: str | None = None) -> Path:
    """The DVC-tracked folder `name` at hash `md5`, pulled from `remote` into this node's
    `cache` once (under a file lock); its path.

    A no-SCM DVC repo in the cache holds one `.dvc` file per version: DVC fetches and checks
    out exactly that hash, verifying its objects, and a second trial on the node finds it done.
    The copy is not trusted forever. Every use compares each file's size with the list that
    `.complete` keeps (a stat each: a disk cleaned, a copy cut short). A use named `check` that
    this copy has not seen (the first on a node, the first after a failed attempt) hashes
    every file against DVC's manifest of the version (its `.dir` object: a md5 per file); a
    file that differs, even at the same size, is removed and pulled again.
    """
    from filelock import FileLock

    cache_dir = Path(cache).expanduser()
    folder = cache_dir / f"{name}-{md5.removesuffix('.dir')}"
    done = folder / ".complete"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        state = _state(done)
        found = state
        if state is None or not _intact(folder / name, state["sizes"]):
            _pull(name, md5, remote, folder, force=state is not None)
            state = {"sizes": _sizes(folder / name), "checked": []}
        if check is not None and check not in state["checked"]:
            damaged = _differing(folder, name, md5)
            if damaged:
                print(f"[data] node {socket.gethostname()}: {len(damaged)} file(s) of {name} "
                      f"differ from DVC's manifest of {md5} ({', '.join(damaged[:3])}"
                      f"{', ...' if len(damaged) > 3 else ''}): pulled again", flush=True)
                _forget(folder, name, md5, damaged)
                _pull(name, md5, remote, folder, force=True)
                still = _differing(folder, name, md5)
                if still:
                    raise DatasetMismatch(
                        f"node {socket.gethostname()}: {folder / name}: {', '.join(still[:3])} "
                        f"still differ from DVC's manifest of {md5} after a new pull: the "
                        "remote's copy is damaged (`dvc push` it again)")
                state = {**state, "sizes": _sizes(folder / name)}
            state = {**state, "checked": [*state["checked"], check][-100:]}
        if state != found:  # a use that changed nothing leaves the marker as it was
            done.write_text(json.dumps(state))
    return folder / name


def node_use() -> str:
    """This node, as a use of a node's dataset copy: its Ray node id inside Ray (a node that
    joins again is a new one), else the machine's boot."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - no Ray context: the machine's own identity
        pass
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{socket.gethostname()}-{boot.read_text().strip() if boot.is_file() else ''}"


def _sizes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_size
            for path in sorted(root.rglob("*")) if path.is_file()}


def _state(done: Path) -> dict | None:
    """What `.complete` says of the copy: its files' sizes, and the uses that hashed them."""
    try:
        state = json.loads(done.read_text())
    except (OSError, ValueError):  # none yet, or an empty marker of an older version
        return None
    return state if isinstance(state.get("sizes"), dict) else None


def _intact(root: Path, sizes: dict[str, int]) -> bool:
    """Every file the pull left is there with its size (a stat each: cheap at any size)."""
    for relative, size in sizes.items():
        try:
            if (root / relative).stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(sizes)


def _object(folder: Path, md5: str) -> Path:
    """An object of the node's DVC cache (DVC 3 layout: files/md5/<2>/<rest>)."""
    return folder / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _manifest(folder: Path, md5: str) -> dict[str, str]:
    """DVC's manifest of the version: relative path -> md5 of each file."""
    entries = json.loads(_object(folder, md5).read_text())
    return {entry["relpath"]: entry["md5"] for entry in entries}


def _md5(path: Path) -> str | None:
    digest = hashlib.md5()
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _differing(folder: Path, name: str, md5: str) -> list[str]:
    """The files of the copy whose md5 is not the manifest's (missing ones too)."""
    return [relative for relative, want in _manifest(folder, md5).items()
            if _md5(folder / name / relative) != want]


def _forget(folder: Path, name: str, md5: str, damaged: list[str]) -> None:
    """Remove damaged files and their cache objects (a link type that shares the file with
    the cache damages both), so that the pull fetches and checks them out again."""
    manifest = _manifest(folder, md5)
    for relative in damaged:
        (folder / name / relative).unlink(missing_ok=True)
        if relative in manifest:
            _object(folder, manifest[relative]).unlink(missing_ok=True)


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


def dataset_folder(version: DatasetVersion, check: str | None = None) -> Path:
    """The verified dataset folder of `version` on this node (pulled first if from DVC; its
    files hashed again for a `check` the node's copy has not seen)."""
    if version.source == "dvc":
        return verify(stage_from_remote(version, check), version)
    return verify(Path(version.path) / version.dataset, version)
