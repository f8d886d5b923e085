"""One driver per sweep storage: a second `ray job submit` or `dvc repro` of the same dataset,
from another login node, would train the same trials beside the first (the single-worker path
deleting the other attempt's checkpoints, two Ray Train controllers rewriting one snapshot,
MLflow's find-then-create making twin runs).

The driver holds `<storage>/<dataset>/driver.lock`, naming itself and refreshed every
HEARTBEAT_S by a thread; another driver that finds a fresh one stops before Ray starts (exit
status 2), naming the holder. A lock whose heartbeat is older than STALE_S (its driver was
killed, its machine lost) is taken over, at once when its driver ran on this machine and its
process is gone (a `kill -9` and a rerun), or with `--force` (the person running it knows the
other driver is gone). Every takeover is logged, and the lock remembers whose it took. An object
store has no atomic create-if-absent that
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
from .logline import log
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
                 stale_s: float = STALE_S, settle_s: float = SETTLE_S, force: bool = False):
        self.storage, self.dataset, self.force = storage, dataset, force
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        self.me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                   "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict | None:
        """The live driver that holds the lock, if another one does; a lock this driver may
        take over is noted in `self.me["took_over"]` (logged once the lock is ours)."""
        held = self.storage.read_json(self.dataset, LOCK)
        if not held or held.get("owner") == self.me["owner"]:
            return None
        silent = time.time() - held.get("heartbeat", 0)
        why = (f"its heartbeat stopped {silent:.0f} s ago (stale after {self.stale_s:.0f} s)"
               if silent >= self.stale_s else
               "its process is gone from this machine"
               if held.get("host") == self.me["host"] and not process_alive(held.get("pid", 0))
               else "--force" if self.force else None)
        if why is None:
            return held
        self.me["took_over"] = {**{k: held.get(k) for k in ("host", "pid", "since",
                                                           "heartbeat")}, "why": why}
        return None

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
                    f"its lock is taken over {self.stale_s:.0f} s after its last heartbeat, "
                    "or at once with `python -m pipeline.sweep --force`")
            self._write()
            time.sleep(self.settle_s)
            held = self.storage.read_json(self.dataset, LOCK) or {}
            if held.get("owner") == self.me["owner"]:
                self._log_takeover()
                self._thread = threading.Thread(target=self._beat, name="sweep-lock",
                                                daemon=True)
                self._thread.start()
                return
        raise SweepLocked(f"sweep@{self.dataset}: another driver claimed "
                          f"{self.storage.uri_of(self.dataset, LOCK)} at the same time")

    def _log_takeover(self) -> None:
        took = self.me.get("took_over")
        if took:
            log(f"{self.dataset}: took over the lock of the driver on host {took['host']} "
                f"(pid {took['pid']}, since {time.ctime(took.get('since') or 0)}): "
                f"{took['why']}")

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
