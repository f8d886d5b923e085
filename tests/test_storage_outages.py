"""Transient storage errors, met by a running sweep: the S3 API answers 503 (SlowDown) for a
while, behind a proxy on 127.0.0.1, during the trials' checkpoint uploads and at the end of the
trial, when the driver's callbacks read the storage. Nothing is lost and no retry is spent: the
calls wait with back-off (pipeline/retry.py), on both trial paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, study_params
from tests.servers import FailingProxy, s3_server, stop

pytestmark = pytest.mark.slow

#: Longer than pyarrow's own retries (measured in the test), shorter than ours bridge (5 of
#: pyarrow's, with 1+2+4+8 s of back-off between them).
BURST_S = 20.0


def _pyarrow_gives_up_after(proxy: FailingProxy, env: dict) -> float:
    """Seconds pyarrow's S3 filesystem (its default retries) takes to give up on 503s."""
    probe = ("import time, pyarrow.fs as fs\nstart = time.monotonic()\ntry:\n"
             "    fs.FileSystem.from_uri('s3://study/x')[0].get_file_info('study/x')\n"
             "except OSError:\n    print(time.monotonic() - start)\n")
    proxy.failing.set()
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        proxy.failing.clear()
    return float(done.stdout.strip().splitlines()[-1])


def _wait_for(predicate, process, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


@pytest.fixture(scope="module")
def flaky_s3(tmp_path_factory):
    """An S3 API behind a proxy that answers 503 while told to, and how long pyarrow alone
    bridges such a burst (measured once for the module)."""
    with s3_server(tmp_path_factory.mktemp("s3")) as s3:
        proxy = FailingProxy(s3["AWS_ENDPOINT_URL"])
        env = {**os.environ, **{k: v for k, v in s3.items() if k.isupper()},
               "AWS_ENDPOINT_URL": proxy.url}
        try:
            gives_up = _pyarrow_gives_up_after(proxy, env)
            print(f"pyarrow alone gives up on 503s after {gives_up:.1f} s")
            yield s3, proxy, env, gives_up
        finally:
            proxy.close()


@pytest.mark.parametrize("workers", [1, 2], ids=["in-trial", "torch-trainer"])
def test_s3_errors_during_uploads_and_callbacks_cost_waits_not_retries(tmp_path, tiny_data,
                                                                       flaky_s3, workers):
    s3, proxy, env, gives_up = flaky_s3
    # longer than pyarrow bridges alone; shorter than our 5 attempts of it and 15 s of waits
    assert gives_up < BURST_S < 5 * gives_up + 15
    proxy.refused = 0
    prefix = f"flaky{workers}"
    params = study_params(tmp_path, tiny_data, train=dict(iterations=30, val_interval=5),
                          sweep=dict(losses=["ce"], seeds=[0], storage=f"s3://study/{prefix}",
                                     cpu_workers_per_trial=workers, scale_lr=True))
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipeline.sweep", "synthetic_voc", "--params",
             str(params), "--results-dir", str(tmp_path / "results")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def keys() -> list[str]:
            found = s3["client"].list_objects_v2(Bucket="study", Prefix=prefix)
            return [o["Key"] for o in found.get("Contents", [])]

        # a burst while the trial uploads its checkpoints
        _wait_for(lambda: any("/iter_" in k for k in keys()), driver, log)
        proxy.failing.set()
        time.sleep(BURST_S)
        proxy.failing.clear()
        in_training = proxy.refused
        # and one over the trial's last upload and the driver's end-of-trial callbacks
        _wait_for(lambda: "iter 25" in log.read_text(), driver, log)
        proxy.failing.set()
        time.sleep(BURST_S)
        proxy.failing.clear()
        assert driver.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        proxy.failing.clear()  # the module's next test starts with a healthy S3
        stop(driver)
    said = log.read_text()
    assert in_training > 0 and proxy.refused > in_training  # both bursts met requests
    # a checkpoint is uploaded every few seconds, and pyarrow alone gives up before the
    # burst ends: the uploads and reads waited with back-off, and no attempt failed
    assert not any(k.endswith("attempts.json") for k in keys())
    (trial,) = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())[
        "trials"]
    assert trial["status"] == "finished"
    assert [h["iteration"] for h in trial["history"]] == list(range(5, 31, 5))
    assert said.count("start  ce_seed0") == 1  # never started again from iteration 0
