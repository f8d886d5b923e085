"""One driver per sweep storage: a second `ray job submit` or `dvc repro` of the same dataset,
from another login node, would train the same trials beside the first (the single-worker path
deleting the other attempt's checkpoints, two Ray Train controllers rewriting one snapshot,
MLflow's find-then-create making twin runs).

The driver holds `<storage>/<dataset>/driver.lock`, naming itself and refreshed every
HEARTBEAT_S by a thread; another driver that finds a fresh one stops before Ray starts (exit
status 2), naming the holder. A lock whose heartbeat is older than STALE_S (its driver was
killed, its machine lost) is taken over, at once when its driver ran on this machine and its
process is gone (a `kill -9` and a rerun). An object store has no atomic create-if-absent that
pyarrow offers, so the driver writes its claim, waits, and reads it back: of two drivers that
claim in the same instant, one reads the other's name and stops.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from ..params import ParamsError
from .storage import Storage

LOCK = "driver.lock"
HEARTBEAT_S = 20.0
STALE_S = 120.0
SETTLE_S = 1.0  # between the claim and its reading back


def process_alive(pid: int) -> bool:
    """A process of this machine with that pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


class SweepLocked(ParamsError):
    """Another driver runs this sweep on this storage."""


class DriverLock:
    def __init__(self, storage: Storage, dataset: str, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S, settle_s: float = SETTLE_S):
        self.storage, self.dataset = storage, dataset
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        self.me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                   "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict | None:
        """The live driver that holds the lock, if another one does."""
        held = self.storage.read_json(self.dataset, LOCK)
        if not held or held.get("owner") == self.me["owner"] or \
                time.time() - held.get("heartbeat", 0) >= self.stale_s:
            return None
        if held.get("host") == self.me["host"] and not process_alive(held.get("pid", 0)):
            return None  # killed on this machine (kill -9, a crash): no need to wait
        return held

    def acquire(self) -> None:
        for _ in range(2):  # the claim, and once more if the reading back found a tie
            holder = self._holder()
            if holder is not None:
                raise SweepLocked(
                    f"sweep@{self.dataset}: another driver runs this sweep on "
                    f"{self.storage.uri_of(self.dataset)} (host {holder.get('host')}, pid "
                    f"{holder.get('pid')}, since {time.ctime(holder.get('since', 0))}; its "
                    f"heartbeat {time.time() - holder.get('heartbeat', 0):.0f} s ago). Two "
                    "drivers would train the same trials. Wait for it to end; if it is dead, "
                    f"its lock is taken over {self.stale_s:.0f} s after its last heartbeat "
                    f"(or delete {self.storage.uri_of(self.dataset, LOCK)})")
            self._write()
            time.sleep(self.settle_s)
            held = self.storage.read_json(self.dataset, LOCK) or {}
            if held.get("owner") == self.me["owner"]:
                self._thread = threading.Thread(target=self._beat, name="sweep-lock",
                                                daemon=True)
                self._thread.start()
                return
        raise SweepLocked(f"sweep@{self.dataset}: another driver claimed "
                          f"{self.storage.uri_of(self.dataset, LOCK)} at the same time")

    def _write(self) -> None:
        self.storage.write_json({**self.me, "heartbeat": time.time()}, self.dataset, LOCK)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError:  # the storage hiccups: the next beat tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self.storage.read_json(self.dataset, LOCK) or {}
        if held.get("owner") == self.me["owner"]:
            self.storage.delete_file(self.dataset, LOCK)

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
