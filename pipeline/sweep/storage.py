"""Where a sweep keeps its trials: a local path or an object store, behind one filesystem.

`sweep.storage` is either a path (made absolute; on a cluster it must be a mount every node
shares) or a URI that pyarrow understands (`s3://bucket/prefix`, `gs://...`; S3-compatible
servers through the standard AWS_ENDPOINT_URL). Ray Train writes the trials' checkpoints there
(`RunConfig(storage_path=..., storage_filesystem=...)`) and the sweep reads them back through
the same pyarrow filesystem; nothing in the sweep builds storage paths from strings elsewhere.

    <storage>/<dataset>/<trial>/iter_<n>/        Ray Train checkpoints: weights + history
    <storage>/<dataset>/<trial>/final/           the last one: summary, artifacts, weights
    <storage>/<dataset>/<trial>/stopped.json     a trial that ASHA stopped
    <storage>/<dataset>/results.json             the stage's results (for `--fetch`)
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from ..params import ParamsError, in_project
from ..retry import with_backoff

#: The final checkpoint's folder name: its summary.json means "finished".
FINAL = "final"


@dataclass(frozen=True)
class Storage:
    """A folder of a pyarrow filesystem: `root` is a path inside `fs` ("bucket/prefix")."""

    uri: str
    fs: object  # pyarrow.fs.FileSystem
    root: str

    @classmethod
    def parse(cls, text: str, on_cluster: bool = False) -> Storage:
        """`sweep.storage` as a Storage; a local path must exist on a cluster (a shared mount
        the sweep cannot create on every node)."""
        import pyarrow.fs as pafs

        if "://" in text:
            try:
                fs, root = pafs.FileSystem.from_uri(text)
            except Exception as error:  # noqa: BLE001 - pyarrow's errors vary by scheme
                raise ParamsError(f"params.yaml: sweep.storage: {text} is not a storage URI "
                                  f"pyarrow can open ({type(error).__name__}: {error})") from None
            return cls(text.rstrip("/"), fs, root.rstrip("/"))
        path = in_project(text).resolve()  # a queued DVC experiment: the repo's
        if on_cluster and not path.is_dir():
            raise ParamsError(f"params.yaml: sweep.storage: {path} does not exist. On a Ray "
                              "cluster it must be a folder every node mounts (or an object "
                              "store URI such as s3://bucket/study)")
        return cls(str(path), pafs.LocalFileSystem(), str(path))

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def path(self, *parts: str) -> str:
        """A path inside `fs` (what Ray's storage_path and pyarrow calls take)."""
        return posixpath.join(self.root, *parts)

    def uri_of(self, *parts: str) -> str:
        """What a person pastes into a shell or a browser for that path."""
        return posixpath.join(self.uri, *parts) if parts else self.uri

    def _retried(self, what: str, call):
        """A call to the storage, retried with back-off on I/O errors (an object store's 5xx,
        a dropped connection): a transient error waits, it does not fail a trial or a sweep."""
        return with_backoff(call, f"{what} {self.uri}")

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._retried("stat", lambda: self.fs.get_file_info(self.path(*parts)).type) \
            != pafs.FileType.NotFound

    def list(self, *parts: str) -> list[str]:
        """The names of a folder's entries; [] when there is no such folder."""
        import pyarrow.fs as pafs

        if not self.exists(*parts):
            return []
        found = self._retried("list", lambda: self.fs.get_file_info(
            pafs.FileSelector(self.path(*parts))))
        return sorted(posixpath.basename(info.path) for info in found)

    def delete(self, *parts: str) -> None:
        """A folder and what it holds."""
        self._retried("delete", lambda: self.fs.delete_dir(self.path(*parts)))

    def delete_file(self, *parts: str) -> None:
        self._retried("delete", lambda: self.fs.delete_file(self.path(*parts)))

    def read_json(self, *parts: str) -> dict | None:
        if not self.exists(*parts):
            return None

        def read() -> bytes:
            with self.fs.open_input_stream(self.path(*parts)) as stream:
                return stream.read()

        return json.loads(self._retried("read", read).decode())

    def write_json(self, data: dict, *parts: str) -> None:
        """Written whole: object stores replace an object at once; a local file is renamed in."""
        text = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        target = self.path(*parts)
        staging = target + ".tmp" if self.is_local else target

        def write() -> None:
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            with self.fs.open_output_stream(staging) as stream:
                stream.write(text)
            if staging != target:
                self.fs.move(staging, target)

        self._retried("write", write)

    def download(self, local: Path, *parts: str, names: Iterable[str] | None = None) -> Path:
        """Copy a folder of the storage to `local` (created); with `names`, only those of its
        entries (files or folders) that exist."""
        import pyarrow.fs as pafs

        entries = [(self.path(*parts), local)] if names is None else \
            [(self.path(*parts, n), local / n) for n in names]
        for source, target in entries:
            kind = self.fs.get_file_info(source).type
            if kind == pafs.FileType.NotFound:
                continue
            # copy_files writes a folder's files into an existing folder, a file to its path
            (target if kind == pafs.FileType.Directory else target.parent).mkdir(
                parents=True, exist_ok=True)
            self._retried("download", lambda s=source, t=target: pafs.copy_files(
                s, str(t.resolve()), source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem()))
        return local

    def put(self, local: Path, *parts: str) -> None:
        """A local file or folder, to exactly that path of the storage."""
        import pyarrow.fs as pafs

        if local.is_dir():
            self.upload(local, *parts)
            return

        def copy() -> None:
            self.fs.create_dir(posixpath.dirname(self.path(*parts)), recursive=True)
            pafs.copy_files(str(local.resolve()), self.path(*parts),
                            source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

        self._retried("upload", copy)

    def upload(self, local: Path, *parts: str) -> None:
        import pyarrow.fs as pafs

        def copy() -> None:
            self.fs.create_dir(self.path(*parts), recursive=True)
            pafs.copy_files(str(local.resolve()), self.path(*parts),
                            source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

        self._retried("upload", copy)


def retrying(fs):
    """`fs` with every call retried with back-off (pyarrow.fs.PyFileSystem): what Ray Train
    writes through the filesystem it is given (its run snapshot, after every report) weathers
    an object store's 503s as the sweep's own calls do."""
    return pafs.PyFileSystem(RetryingHandler(fs))


class RetryingHandler(pafs.FileSystemHandler):
    """The pyarrow.fs.FileSystemHandler methods, each the inner filesystem's, retried."""

    def __init__(self, inner):
        self.inner = inner

    def __reduce__(self):  # Ray pickles the filesystem to the trial's controller
        return (type(self), (self.inner,))

    def _call(self, what: str, call):
        return with_backoff(call, f"{what} ({self.inner.type_name})")

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.inner.equals(other.inner)

    def get_type_name(self) -> str:
        return f"retrying-{self.inner.type_name}"

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        return self._call("stat", lambda: self.inner.get_file_info(paths))

    def get_file_info_selector(self, selector):
        return self._call("list", lambda: self.inner.get_file_info(selector))

    def create_dir(self, path, recursive):
        self._call("mkdir", lambda: self.inner.create_dir(path, recursive=recursive))

    def delete_dir(self, path):
        self._call("delete", lambda: self.inner.delete_dir(path))

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._call("delete", lambda: self.inner.delete_dir_contents(
            path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self):
        self._call("delete", lambda: self.inner.delete_dir_contents("/", accept_root_dir=True))

    def delete_file(self, path):
        self._call("delete", lambda: self.inner.delete_file(path))

    def move(self, src, dest):
        self._call("move", lambda: self.inner.move(src, dest))

    def copy_file(self, src, dest):
        self._call("copy", lambda: self.inner.copy_file(src, dest))

    def open_input_stream(self, path):
        return self._call("read", lambda: self.inner.open_input_stream(path))

    def open_input_file(self, path):
        return self._call("read", lambda: self.inner.open_input_file(path))

    def open_output_stream(self, path, metadata):
        return self._call("write", lambda: self.inner.open_output_stream(path,
                                                                          metadata=metadata))

    def open_append_stream(self, path, metadata):
        return self._call("write", lambda: self.inner.open_append_stream(path,
                                                                          metadata=metadata))

