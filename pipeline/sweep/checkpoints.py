"""A trial's checkpoints in the sweep's storage, as a restarted attempt (or the driver) reads
them: which are whole, the newest, the iteration it holds, and whether Ray Train's snapshot of
the run can be read by this Ray.

    <storage>/<dataset>/<trial>/iter_<n>/   the history (written last) and the weights
    <storage>/<dataset>/<trial>/final/      the summary (written last), artifacts, weights
"""
from __future__ import annotations

from ..train import HISTORY, SUMMARY
from .storage import FINAL, Storage

#: Ray Train's record of a run's checkpoints (ray/train/v2/_internal/constants.py), which only
#: the Ray version that wrote it reads.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


class RaySnapshotMismatch(RuntimeError):
    """Ray Train's snapshot of a trial's run was written by another Ray version."""


def marker(name: str) -> str:
    """The file of checkpoint `name` that the run writes last: SUMMARY, or the history. A
    checkpoint cut short by a kill lacks it."""
    return SUMMARY if name == FINAL else HISTORY


def is_whole(storage: Storage, folder: tuple[str, str], name: str) -> bool:
    if not (name == FINAL or name.startswith("iter_")):
        return False
    entries = storage.list(*folder, name)
    return marker(name) in entries and any(e.endswith(".pth") for e in entries)


def latest_whole(storage: Storage, folder: tuple[str, str]) -> str | None:
    """The trial's newest whole checkpoint: `final`, else the iter_<n> of the largest n whose
    marker and weights are both there."""
    saved = [n for n in storage.list(*folder) if is_whole(storage, folder, n)]
    if FINAL in saved:
        return FINAL
    return max((n for n in saved if n.startswith("iter_")), key=iteration_of, default=None)


def iteration_of(name: str | None) -> int:
    """The iteration a checkpoint folder holds (0: none yet; -1: `final`)."""
    if name is None:
        return 0
    return -1 if name == FINAL else int(name.removeprefix("iter_"))


def check_ray_snapshot(storage: Storage, folder: tuple[str, str]) -> None:
    """Ray Train refuses a run snapshot from another Ray version when the trial starts again,
    and would keep refusing it on every retry: say so, and what to do, before it starts."""
    import ray

    snapshot = storage.read_json(*folder, RAY_SNAPSHOT)
    if snapshot is None or snapshot.get("ray_version") in (None, ray.__version__):
        return
    latest = latest_whole(storage, folder)
    resume = (f"it resumes from its newest checkpoint there ({storage.uri_of(*folder, latest)})"
              if latest else "it has no whole checkpoint there and starts from iteration 0")
    raise RaySnapshotMismatch(
        f"{storage.uri_of(*folder, RAY_SNAPSHOT)} was written by Ray "
        f"{snapshot.get('ray_version')}, and this cluster runs Ray {ray.__version__}, which "
        f"refuses it. Run the sweep with Ray {snapshot.get('ray_version')}, or delete that "
        f"file to go on with this Ray: {resume}")
