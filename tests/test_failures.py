"""What a spot cluster does to a sweep, short of losing a node: storage errors weathered with
back-off, Tune callbacks that never raise, errors no retry can mend ending a trial for good
(also under max_failures: -1), dead attempts' work dirs cleared, and hung collectives bounded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

from pipeline.params import ParamsError
from pipeline.sweep import failures
from pipeline.sweep.storage import Storage
from tests.conftest import study_params, sweep


@pytest.fixture
def no_waiting(monkeypatch):
    waits = []
    monkeypatch.setattr("pipeline.retry.time.sleep", waits.append)
    return waits


def FlakyFileSystem(times: int) -> pafs.PyFileSystem:  # noqa: N802 - reads as a class
    """A local filesystem whose writes and reads fail `times` times first (an S3 5xx)."""
    return pafs.PyFileSystem(FlakyHandler(times))


class FlakyHandler(pafs.FileSystemHandler):
    def __init__(self, times: int):
        self.local = pafs.LocalFileSystem()
        self.left = times
        self.calls = 0

    def _maybe_fail(self):
        self.calls += 1
        if self.left:
            self.left -= 1
            raise OSError("When uploading part: AWS Error SLOW_DOWN (HTTP status 503)")

    def get_type_name(self):
        return "flaky"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self._maybe_fail()
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        self._maybe_fail()
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        self._maybe_fail()
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._maybe_fail()
        return self.local.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        raise NotImplementedError


def test_storage_calls_weather_transient_errors_with_backoff(tmp_path, no_waiting):
    fs = FlakyFileSystem(times=3)
    storage = Storage(str(tmp_path), fs, str(tmp_path))
    storage.write_json({"iteration": 4}, "trial", "state.json")  # 3 failures, then written
    assert no_waiting == [1.0, 2.0, 4.0]
    assert json.loads((tmp_path / "trial" / "state.json").read_text()) == {"iteration": 4}
    fs.handler.left = 2
    assert storage.read_json("trial", "state.json") == {"iteration": 4}
    local = tmp_path / "weights.pth"
    local.write_bytes(b"w" * 100)
    fs.handler.left = 1
    storage.put(local, "trial", "iter_4", "weights.pth")
    assert (tmp_path / "trial" / "iter_4" / "weights.pth").read_bytes() == b"w" * 100


def test_an_error_that_outlasts_the_retries_is_raised(tmp_path, no_waiting):
    storage = Storage(str(tmp_path), FlakyFileSystem(times=99), str(tmp_path))
    with pytest.raises(OSError, match="SLOW_DOWN"):
        storage.write_json({}, "x.json")
    assert len(no_waiting) == 4  # 5 attempts


def test_no_tune_callback_raises_when_the_storage_fails(tmp_path, no_waiting, capsys):
    """An S3 error inside on_trial_complete would make Tune stop every trial."""
    from pipeline.progress import Progress
    from pipeline.sweep.callbacks import tune_callback

    broken = Storage(str(tmp_path), FlakyFileSystem(times=99), str(tmp_path))
    trial = SimpleNamespace(key="k" * 64, name="ce_seed0_kkkkkkkk", folder=("d", "ce_seed0"),
                            summary=lambda storage: storage.read_json("d", "x"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("{}")
    tracking = SimpleNamespace(study=SimpleNamespace(storage=broken), behind=False,
                               later=lambda what, write: None, child=lambda t: "run")
    progress = Progress("sweep@d", 1, print)
    callback = tune_callback(tracking, {trial.key: trial}, progress)
    tune_trial = SimpleNamespace(config={"trial": {"key": trial.key}}, last_result={},
                                 error_file=None)
    callback.on_trial_start(0, [], tune_trial)
    callback.on_trial_complete(0, [], tune_trial)  # the storage raises inside: not out
    assert tracking.behind
    assert "on_trial_complete failed (OSError" in capsys.readouterr().out
    assert progress.done == 1  # counted before the storage was asked


def test_an_error_no_retry_mends_fails_the_trial_at_once(tmp_path):
    from pipeline.train import PretrainedWeightsError

    storage = Storage.parse(str(tmp_path))
    folder = ("d", "t")
    verdict = failures.record_failure(storage, folder, PretrainedWeightsError("no weights"))
    assert verdict["why"].startswith("PretrainedWeightsError")
    assert failures.fatal_verdict(storage, folder) == verdict
    failures.clear(storage, folder)
    assert failures.fatal_verdict(storage, folder) is None


def test_the_same_error_at_the_same_iteration_ends_the_retries_a_machine_error_never(
        tmp_path):
    storage = Storage.parse(str(tmp_path))
    for attempt in range(failures.REPEATS - 1):
        error = RuntimeError(f"size mismatch for decode_head at 0x7f{attempt}a3 (pid={attempt})")
        assert failures.record_failure(storage, ("d", "t"), error, iteration=20) is None
    verdict = failures.record_failure(storage, ("d", "t"), RuntimeError(
        "size mismatch for decode_head at 0x7f9a3 (pid=77)"), iteration=20)
    assert verdict and "at iteration 20 ended 3 attempts in a row" in verdict["why"]
    # the same error after progress (a later checkpoint each time): retried
    for iteration in (10, 20, 30, 40):
        assert failures.record_failure(storage, ("d", "p"), RuntimeError("NaN loss"),
                                       iteration=iteration) is None
    # the cap is a param: 2
    assert failures.record_failure(storage, ("d", "c"), RuntimeError("x"), repeats=2) is None
    assert failures.record_failure(storage, ("d", "c"), RuntimeError("x"), repeats=2)

    class ActorDiedError(RuntimeError):
        pass

    for _ in range(2 * failures.REPEATS):  # a node taken back, again and again: retried
        assert failures.record_failure(storage, ("d", "m"),
                                       ActorDiedError("The actor died unexpectedly")) is None
    # different errors: retried
    for i in range(failures.REPEATS):
        assert failures.record_failure(storage, ("d", "v"), ValueError(f"error {i}")) is None


def test_the_root_of_ray_trains_wrappers_is_what_counts():
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from pipeline.params import ParamsError as Bad

    wrapped = WorkerGroupError("rank 0 failed", {1: ValueError("b"), 0: Bad("params.yaml: x")})
    assert failures.chain(wrapped)[-1].args == ("params.yaml: x",)
    assert failures.fatal_kind(wrapped) == "ParamsError"
    assert failures.signature(ControllerError(RuntimeError("Ray 2.59 snapshot"))) == \
        "RuntimeError: Ray 2.59 snapshot"


def test_a_ray_snapshot_of_another_ray_version_is_refused_saying_what_to_do(tmp_path):
    import ray

    from pipeline.sweep.checkpoints import RAY_SNAPSHOT, RaySnapshotMismatch, check_ray_snapshot

    storage, folder = Storage.parse(str(tmp_path)), ("voc", "ce_seed0")
    check_ray_snapshot(storage, folder)  # none yet
    storage.write_json({"ray_version": ray.__version__}, *folder, RAY_SNAPSHOT)
    check_ray_snapshot(storage, folder)  # this Ray's
    storage.write_json({"ray_version": "2.9.3"}, *folder, RAY_SNAPSHOT)
    for name in ("eval_history.jsonl", "iter_40.pth"):
        storage.write_json({}, *folder, "iter_40", name)
    with pytest.raises(RaySnapshotMismatch, match=rf"written by Ray 2.9.3, and this cluster runs "
                       rf"Ray {ray.__version__}.*Run the sweep with Ray 2.9.3, or delete that "
                       r"file.*resumes from its newest checkpoint there \(.*iter_40\)") as error:
        check_ray_snapshot(storage, folder)
    assert failures.fatal_kind(error.value) == "RaySnapshotMismatch"  # not retried


@pytest.mark.slow
def test_retry_forever_ends_on_a_fault_at_the_same_iteration_of_every_attempt(tmp_path,
                                                                              tiny_data):
    """max_failures: -1 (spot instances): every trial's first attempt crashes, and one trial
    also faults at iteration 4 of every attempt (each resumes from iteration 2). That trial
    fails after the cap; the other, retried, finishes; the sweep exits 1."""
    from pipeline.sweep.trial import FAIL_AT_ENV, FAULT_ENV

    params = study_params(tmp_path, tiny_data, train={"iterations": 6, "val_interval": 2},
                          sweep={"losses": ["ce"], "seeds": [0, 1], "max_failures": -1,
                                 "max_repeated_failures": 2})
    done = sweep(params, tmp_path, env={FAIL_AT_ENV: "ce_seed0@4",
                                        FAULT_ENV: str(tmp_path / "faults")}, timeout=400)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())["trials"]
    status = {t["trial"].rsplit("_", 1)[0]: t for t in trials}
    assert status["ce_seed1"]["status"] == "finished"  # after a crashed first attempt
    assert sorted(p.name for p in (tmp_path / "faults").iterdir()) == \
        sorted(t["key"] for t in trials)
    assert status["ce_seed0"]["status"] == "failed"
    assert "injected fault (PIXIOU_FAIL_AT) at iteration 4" in status["ce_seed0"]["error"]
    assert "the same error at iteration 2 ended 2 attempts in a row" in \
        status["ce_seed0"]["error"]
    (attempts,) = (tmp_path / "sweeps").rglob("ce_seed0_*/attempts.json")
    errors = json.loads(attempts.read_text())["errors"]
    assert "first attempt" in errors[0]["error"]  # then the same fault twice: the cap
    assert [a["iteration"] for a in errors[1:]] == [2, 2]
    assert "FAILED ce_seed0" in done.stdout


def test_dead_attempts_work_dirs_are_cleared(tmp_path):
    from pipeline.sweep.trial import OWNER, clear_dead_attempts

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, alive, foreign = tmp_path / "ce_seed0-rank0-a", tmp_path / "ce_seed0-rank0-b", \
        tmp_path / "other"
    for folder, pid in ((dead, gone.pid), (alive, __import__("os").getpid()), (foreign, None)):
        folder.mkdir()
        if pid is not None:
            (folder / OWNER).write_text(str(pid))
        (folder / "iter_4.pth").write_bytes(b"x")
    assert clear_dead_attempts(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and foreign.exists()


def test_a_hung_collective_is_bounded_by_a_param():
    from pipeline.sweep.trial import torch_config
    from pipeline.sweep_params import SweepParams

    params = SweepParams(losses=["ce"], seeds=[0])
    assert params.collective_timeout_s == 300  # not torch's 1800
    assert torch_config(params.collective_timeout_s).timeout_s == 300
    with pytest.raises(ParamsError, match="collective_timeout_s must be >= 10"):
        SweepParams(losses=["ce"], seeds=[0], collective_timeout_s=1).validate("sweep")


def test_a_trial_run_a_killed_driver_left_half_made_is_completed(tmp_path, monkeypatch):
    """`kill -9` of the driver right after MLflow made a trial's run: the next driver finds the
    run by its key and logs the params it lacks; its tags (the UI's search by arm) came with
    the run itself."""
    from pipeline.tracking import RUN_MADE, Tracker, TrackingParams

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the experiment's artifacts go here
    first = Tracker(TrackingParams(uri=uri))
    parent = first.parent_run("sweep-key", "sweep-synthetic_voc", params={}, tags={})

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    made = dict(name="ce_seed0_abc", params={"loss": "ce", "seed": 0},
                tags={"arm": "convergence"}, description="CE, seed 0")
    monkeypatch.setattr(first, "_log_params", killed)
    with pytest.raises(Killed):
        first.child_run(parent, "trial-key", **made)

    second = Tracker(TrackingParams(uri=uri))
    run_id = second.child_run(parent, "trial-key", **made)
    run = second.client.get_run(run_id)
    assert run.data.params == {"loss": "ce", "seed": "0"}
    assert run.data.tags["arm"] == "convergence" and run.data.tags[RUN_MADE] == "1"
    found = second.client.search_runs([run.info.experiment_id], "tags.arm = 'convergence'")
    assert [r.info.run_id for r in found] == [run_id]  # the same run, not a second one


def test_mlflow_writes_wait_off_tunes_event_loop_and_keep_their_order():
    """A tracking server that takes 0.3 s a write: the callbacks' calls return at once, and the
    writes are made in order, all of them by the flush."""
    import time

    from pipeline.sweep.mlflow_runs import WriteQueue

    made, failed = [], []

    def safely(what, write):
        try:
            write()
        except Exception as error:  # noqa: BLE001
            failed.append((what, error))

    writes = WriteQueue(safely)
    started = time.perf_counter()
    for i in range(5):
        assert writes.put(f"w{i}", lambda i=i: (time.sleep(0.3), made.append(i)))
    writes.put("broken", lambda: 1 / 0)  # a failure is the writer's, not the caller's
    assert time.perf_counter() - started < 0.1
    assert writes.flush(timeout_s=30)
    assert made == [0, 1, 2, 3, 4] and [w for w, _ in failed] == ["broken"]
    # an unreachable server: the flush gives up in time, and says so
    writes.put("hangs", lambda: time.sleep(5))
    assert not writes.flush(timeout_s=0.5)
    # a full queue refuses a write (the reconciliation makes it) rather than wait
    small = WriteQueue(safely, size=1)
    assert small.put("hangs", lambda: time.sleep(1))
    time.sleep(0.2)  # the writer has taken it
    assert small.put("queued", lambda: None)
    assert not small.put("over", lambda: None)


def _checkpoint(folder: Path, name: str, files: list[str]) -> None:
    (folder / name).mkdir(parents=True)
    for file in files:
        (folder / name / file).write_text(file)


def test_a_restarted_ray_train_trial_resumes_from_the_storages_newest_whole_checkpoint(
        tmp_path, monkeypatch):
    """Ray Train's snapshot can lag the uploads (its controller died with the node): iter_10 is
    whole in the storage while Ray still names iter_5. iter_12 lost its weights to the kill."""
    import ray.train

    from pipeline.sweep.trial import RayTrainReporter

    folder = tmp_path / "storage" / "d" / "t"
    _checkpoint(folder, "iter_5", ["iter_5.pth", "eval_history.jsonl"])
    _checkpoint(folder, "iter_10", ["iter_10.pth", "eval_history.jsonl"])
    _checkpoint(folder, "iter_12", ["eval_history.jsonl"])  # its weights never arrived
    monkeypatch.setattr(ray.train, "get_checkpoint",
                        lambda: ray.train.Checkpoint.from_directory(str(folder / "iter_5")))
    work = tmp_path / "work"
    work.mkdir()
    reporter = RayTrainReporter(work, ["n"], Storage.parse(str(tmp_path / "storage")),
                                ("d", "t"))
    assert reporter.restore(work) is None  # not finished
    assert (work / "last_checkpoint").read_text() == str(work / "iter_10.pth")


def test_a_launching_trial_sits_on_the_head_node():
    """The Tune trial of a TorchTrainer (and so Ray Train's controller, started on its node) is
    placed on the head node, which a spot cluster does not take back."""
    from pipeline.sweep.driver import HEAD_NODE, _trial_resources
    from pipeline.sweep_params import SweepParams

    gpu = SimpleNamespace(sweep=SweepParams(losses=["ce"], seeds=[0], gpus_per_trial=4))
    assert _trial_resources(gpu) == {"memory": 1, HEAD_NODE: 0.001}
    cpu = SimpleNamespace(sweep=SweepParams(losses=["ce"], seeds=[0]))
    assert _trial_resources(cpu) == {"CPU": 1}  # trains itself: wherever a CPU is free


def test_a_retried_trial_is_one_trial_and_mlflow_gets_each_step_once(tmp_path, capsys):
    """A trial killed after evaluating iterations 2 (checkpointed) and 4 (not), retried on
    another node: one trial running, both nodes listed, MLflow given 2 once and the retry's 4."""
    from pipeline.progress import Progress
    from pipeline.sweep.callbacks import tune_callback

    logged, tags = [], []
    tracker = SimpleNamespace(log_evaluations=lambda run, records: logged.extend(
        (r["iteration"], r["mIoU"]) for r in records),
        set_tags=lambda run, values: tags.append(values["nodes"]))
    tracking = SimpleNamespace(study=SimpleNamespace(storage=None), behind=False,
                               tracker=tracker, child=lambda t: "run",
                               later=lambda what, write: write())
    trial = SimpleNamespace(key="k", name="ce_seed0_k", folder=("d", "t"))
    progress = Progress("sweep@d", 1, print)
    callback = tune_callback(tracking, {"k": trial}, progress)
    tune_trial = SimpleNamespace(config={"trial": {"key": "k"}}, error_file=None)

    def report(iteration, miou, node, checkpoint):
        callback.on_trial_result(0, [], tune_trial, {
            "iteration": iteration, "mIoU": miou, "image-mIoU": 1, "mPixIoU": 1,
            "world_size": 2, "nodes": node, "checkpoint_name": checkpoint})

    callback.on_trial_start(0, [], tune_trial)
    report(2, 10.0, "node-a", "iter_2")
    report(4, 11.0, "node-a", "")  # evaluated, not checkpointed: the kill comes now
    callback.on_trial_recover(0, [], tune_trial)
    callback.on_trial_start(0, [], tune_trial)
    assert progress.running == 1
    report(4, 12.0, "node-b", "iter_4")  # redone on the other node
    assert logged == [(2, 10.0), (4, 12.0)]
    assert [(h["iteration"], h["mIoU"]) for h in callback.history["k"]] == [(2, 10.0), (4, 12.0)]
    assert callback.nodes["k"] == ["node-a", "node-b"] and tags[-1] == "node-a,node-b"
    assert "retry  ce_seed0_k" in capsys.readouterr().out


def test_one_driver_per_sweep_storage(tmp_path, capsys):
    """A second driver on the storage stops, naming the first; a dead driver's lock (no
    heartbeat for STALE_S) is taken over; the lock goes with its driver."""
    import time

    from pipeline.sweep.lock import LOCK, DriverLock, SweepLocked

    storage = Storage.parse(str(tmp_path))
    first = DriverLock(storage, "voc", heartbeat_s=0.1, settle_s=0.05)
    first.acquire()
    beat = storage.read_json("voc", LOCK)["heartbeat"]
    time.sleep(0.35)
    assert storage.read_json("voc", LOCK)["heartbeat"] > beat  # it beats
    second = DriverLock(storage, "voc", settle_s=0.05)
    with pytest.raises(SweepLocked, match=r"another driver runs this sweep on .*\(host \S+, "
                                          rf"pid {__import__('os').getpid()}"):
        second.acquire()
    with DriverLock(storage, "cityscapes", settle_s=0.05):  # another sweep: its own lock
        pass
    first.release()
    assert not storage.exists("voc", LOCK)
    with second:
        assert storage.read_json("voc", LOCK)["owner"] == second.me["owner"]
    # a driver of this machine killed with kill -9: its lock is taken over at once
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    storage.write_json({"owner": "killed", "host": second.me["host"], "pid": gone.pid,
                        "since": 0, "heartbeat": time.time()}, "voc", LOCK)
    with DriverLock(storage, "voc", settle_s=0.05):
        pass
    # a driver elsewhere killed without releasing: its lock goes stale
    storage.write_json({"owner": "dead", "host": "h", "pid": 1, "since": 0,
                        "heartbeat": time.time() - 500}, "voc", LOCK)
    with DriverLock(storage, "voc", settle_s=0.05) as third:
        assert storage.read_json("voc", LOCK)["owner"] == third.me["owner"]
        assert storage.read_json("voc", LOCK)["took_over"]["host"] == "h"
    assert "took over the lock of the driver on host h (pid 1" in capsys.readouterr().out
    # --force: a fresh lock is taken at once, and the takeover is logged
    with DriverLock(storage, "voc", settle_s=0.05):
        with pytest.raises(SweepLocked, match="or at once with `python -m pipeline.sweep "
                                              "--force`"):
            DriverLock(storage, "voc", settle_s=0.05).acquire()
        forced = DriverLock(storage, "voc", settle_s=0.05, force=True)
        forced.acquire()
        assert storage.read_json("voc", LOCK)["owner"] == forced.me["owner"]
        forced.release()
    assert f"pid {__import__('os').getpid()}" in capsys.readouterr().out.split("--force")[0]


@pytest.mark.slow
def test_two_drivers_started_within_a_second_one_trains_the_other_stops(tmp_path, tiny_data):
    import os
    import time

    from pipeline.sweep.lock import LOCK
    from tests.conftest import ROOT

    params = study_params(tmp_path, tiny_data, sweep={"losses": ["ce", "lovasz"], "seeds": [0]})
    command = [sys.executable, "-m", "pipeline.sweep", "synthetic_voc", "--params", str(params),
               "--results-dir", str(tmp_path / "results")]
    drivers = []
    try:
        for _ in range(2):  # a double `ray job submit`
            drivers.append((time.monotonic(), subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=dict(os.environ))))
            time.sleep(0.5)
        while all(process.poll() is None for _, process in drivers):
            time.sleep(0.1)
        started, first_out = next(d for d in drivers if d[1].poll() is not None)
        assert time.monotonic() - started < 30  # the second driver stops within 30 s
        said = {process.pid: process.communicate(timeout=400)[0] for _, process in drivers}
    finally:
        for _, process in drivers:
            if process.poll() is None:
                process.kill()
    codes = sorted(process.returncode for _, process in drivers)
    assert codes == [0, 2], "\n".join(out[-2500:] for out in said.values())
    (_, stopped), (_, trained) = sorted(drivers, key=lambda d: -d[1].returncode)
    assert stopped is first_out
    assert "another driver runs this sweep" in said[stopped.pid]
    assert f"pid {trained.pid}" in said[stopped.pid]  # it names the one that trains
    assert "2 finished" in said[trained.pid]
    assert not (tmp_path / "sweeps" / "synthetic_voc" / LOCK).exists()
