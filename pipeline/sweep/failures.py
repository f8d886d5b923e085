"""Which failures of a trial are worth another attempt.

`sweep.max_failures: -1` retries a crashed trial forever, as spot instances need: a node taken
back, a dropped connection, a rank that hung. An error that fails the same way every time (a
bad config, weights that are not there, a checkpoint from another Ray version) would keep such
a sweep running forever. So a trial's failures are written to its folder in the storage, with
the iteration the attempt had reached (its newest whole checkpoint there), and a trial fails
for good, whatever `max_failures` says, when its error is of a kind no retry can mend (`FATAL`)
or when the same error at the same iteration ends `sweep.max_repeated_failures` attempts in a
row (an attempt that got further before failing alike made progress: it is retried). The trial
then returns without training; the driver reads `fatal.json` and records the trial as failed
with that error. A new run of the sweep clears the verdict and tries again (the cause may be
fixed).
"""
from __future__ import annotations

import re
import time
import traceback

from .storage import Storage

FATAL_FILE = "fatal.json"
ATTEMPTS_FILE = "attempts.json"
#: The same error at the same iteration ending this many attempts in a row fails the trial for
#: good (the default of `sweep.max_repeated_failures`).
REPEATS = 3
#: Errors that say the trial itself is wrong, not the machine it ran on (by class name: they
#: reach the trial's driver wrapped by Ray Train, whose text keeps the original's name).
FATAL = ("ParamsError", "PretrainedWeightsError", "PrecisionError", "DatasetMismatch",
         "RaySnapshotMismatch")
#: The machine's failures, never the trial's, however often they repeat: a node or process
#: gone (spot preemption), a collective that timed out, a connection dropped.
MACHINE = ("PreemptionError", "ActorDiedError", "RayActorError", "NodeDiedError",
           "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "ActorUnavailableError",
           "DistBackendError", "DistNetworkError", "TimeoutError", "ConnectionError")


def chain(error: BaseException) -> list[BaseException]:
    """The error and those it wraps (Ray Train's and Ray's wrappers, Python's causes), the
    one that started it last."""
    found = [error]
    while True:
        failures = getattr(error, "worker_failures", None)  # WorkerGroupError: rank -> error
        inner = (failures[min(failures)] if failures else
                 getattr(error, "controller_failure", None)  # ControllerError
                 or getattr(error, "cause", None)  # RayTaskError
                 or error.__cause__ or error.__context__)
        if not isinstance(inner, BaseException) or any(inner is e for e in found):
            return found
        found.append(inner)
        error = inner


def _named(error: BaseException, names: tuple[str, ...]) -> str | None:
    """The first of `names` that a class along the error's chain is named after (Ray's
    RayTaskError(ParamsError) too)."""
    classes = [type(e).__name__ for e in chain(error)]
    return next((n for n in names if any(n in c for c in classes)), None)


def signature(error: BaseException) -> str:
    """The error's last line, without what differs between attempts (addresses, pids, ids,
    paths of temporary folders), so that two attempts failing alike compare equal."""
    error = chain(error)[-1]
    lines = [line for line in traceback.format_exception_only(error)[-1].strip().splitlines()
             if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    text = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{16,}\b", "<id>", text)
    text = re.sub(r"(pid|ip|node)=\S+", r"\1=<id>", text)
    return re.sub(r"/tmp\S*", "<tmp>", text)[:500]


def fatal_kind(error: BaseException) -> str | None:
    """The FATAL class an error is, or wraps."""
    return _named(error, FATAL)


def record_failure(storage: Storage, folder: tuple[str, str], error: BaseException,
                   iteration: int = 0, repeats: int = REPEATS) -> dict | None:
    """Note this attempt's error and the iteration it had reached; return the verdict (also
    written to `fatal.json`) when the trial should not be tried again, else None."""
    attempts = (storage.read_json(*folder, ATTEMPTS_FILE) or {}).get("errors", [])
    attempts.append({"error": signature(error), "iteration": iteration, "at": time.time()})
    storage.write_json({"errors": attempts[-20:]}, *folder, ATTEMPTS_FILE)
    kind = fatal_kind(error)
    last = {(a["error"], a.get("iteration", 0)) for a in attempts[-repeats:]}
    repeated = len(attempts) >= repeats and len(last) == 1
    if kind is None and (_named(error, MACHINE) is not None or not repeated):
        return None
    why = (f"{kind}: no retry can mend it" if kind else
           f"the same error at iteration {iteration} ended {repeats} attempts in a row "
           "(sweep.max_repeated_failures)")
    verdict = {"error": signature(error), "why": why, "attempts": len(attempts),
               "iteration": iteration}
    storage.write_json(verdict, *folder, FATAL_FILE)
    return verdict


def fatal_verdict(storage: Storage, folder: tuple[str, str]) -> dict | None:
    return storage.read_json(*folder, FATAL_FILE)


def clear(storage: Storage, folder: tuple[str, str]) -> None:
    """A new run of the sweep tries a trial that failed for good again."""
    for name in (FATAL_FILE, ATTEMPTS_FILE):
        if storage.exists(*folder, name):
            storage.delete_file(*folder, name)
