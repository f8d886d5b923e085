"""The MLflow UI of a study (`make ui`): its REST API, the page in headless Chromium, and what
listens where; and no secret of the environment in what the study wrote."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, SECRET, STAGE_ENV, free_port, results
from tests.servers import start, stop

pytestmark = pytest.mark.slow


def listening(pids: set[int]) -> list[tuple[str, int]]:
    return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                   if c.status == psutil.CONN_LISTEN and c.pid in pids})


def process_tree(pid: int) -> set[int]:
    root = psutil.Process(pid)
    return {root.pid, *(p.pid for p in root.children(recursive=True))}


def get(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def ui(study):
    """`make ui` on the study's store, on a free port; stopped (its whole process group) after."""
    port = free_port()
    server = subprocess.Popen(
        ["make", "-C", str(ROOT), "ui", f"UI_PORT={port}",
         f"MLFLOW_STORE=sqlite:///{study / 'mlflow.db'}"],
        cwd=study, env=STAGE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.time() < deadline, "the MLflow UI did not answer in 120 s"
            time.sleep(1)
        yield url, server.pid
    finally:
        stop(server)
        server.stdout.close()


def test_the_ui_serves_the_study_runs_over_its_rest_api(ui, study, covered):
    url, _ = ui
    api = f"{url}/api/2.0/mlflow"
    experiment = get(f"{api}/experiments/get-by-name?experiment_name=pixiou-study")["experiment"]
    found = get(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                       "max_results": 100})["runs"]
    tags = lambda run: {t["key"]: t["value"] for t in run["data"].get("tags", [])}  # noqa: E731
    parents = [r for r in found if "pixiou.sweep_key" in tags(r)]
    pretrained = [r for r in found if "pixiou.pretrain_key" in tags(r)]
    # the pre-training, one sweep, four trials under it
    assert len(parents) == 1 and len(pretrained) == 1 and len(found) == 6
    assert pretrained[0]["info"]["run_name"] == "pretrain-synthetic_voc"
    trials = results(study)["trials"]
    # loss, dataset and seed are searchable params; every child hangs under the parent.
    for loss in ("ce", "pixiou"):
        runs = get(f"{api}/runs/search", {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"params.loss = '{loss}' and params.dataset = 'synthetic_voc'"})["runs"]
        trained = [r for r in runs if "mlflow.parentRunId" in tags(r)]
        # the CE pre-training is a CE run of that dataset too
        assert len(trained) == 2 and len(runs) == 2 + (loss == "ce")
        for run in trained:
            assert tags(run)["mlflow.parentRunId"] == parents[0]["info"]["run_id"]
            trial = next(t for t in trials if t["mlflow_run_id"] == run["info"]["run_id"])
            assert trial["loss"] == loss
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert metrics["final.mIoU"] == pytest.approx(trial["mIoU"])
            assert metrics["final.mPixIoU"] == pytest.approx(trial["mPixIoU"])
            assert metrics["final.image-mIoU"] == pytest.approx(trial["image-mIoU"])
    seed_one = get(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                          "filter": "params.seed = '1'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in seed_one) == \
        sorted(t["trial"] for t in trials if t["seed"] == 1)
    covered("exposure checks", "MLflow UI REST API lists the study's runs with their params")


def test_the_ui_page_lists_a_study_run_in_headless_chromium(ui, study, tmp_path, covered):
    url, _ = ui
    chromium = shutil.which("chromium")
    if not chromium and not os.environ.get("CI"):  # CI runs as root: there it must be present
        pytest.skip("Debian's chromium is not installed: `make browser` needs root or "
                    "passwordless sudo to install it (apt-get install chromium)")
    assert chromium, "Debian's chromium is missing: `make test` installs it (make browser)"
    experiment = get(f"{url}/api/2.0/mlflow/experiments/get-by-name"
                     "?experiment_name=pixiou-study")["experiment"]["experiment_id"]
    page = f"{url}/#/experiments/{experiment}/runs"  # the runs table
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]
    dom = subprocess.run(browse + ["--dump-dom", page], capture_output=True, text=True,
                         timeout=180).stdout
    # The runs table lists the sweep's parent run; its trials fold under it.
    parent = get(f"{url}/api/2.0/mlflow/runs/get?run_id="
                 f"{results(study)['mlflow_parent_run_id']}")["run"]["info"]["run_name"]
    assert "MLflow" in dom
    assert parent in dom, dom[-3000:]
    # A screenshot, for a person to look at when this fails.
    subprocess.run(browse + ["--window-size=1400,900", f"--screenshot={tmp_path / 'ui.png'}",
                             page], capture_output=True, timeout=180)
    covered("exposure checks", "MLflow UI page lists a study run (headless Chromium)")


def test_the_ui_listens_only_on_127_0_0_1(ui, covered):
    _, pid = ui
    sockets = listening(process_tree(pid))
    assert sockets, "the UI's processes listen on nothing"
    assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    covered("exposure checks", "MLflow UI (make ui) binds 127.0.0.1 only")


def test_the_ray_dashboard_listens_only_on_127_0_0_1(tmp_path, covered):
    # The sweep's own local Ray starts no dashboard at all...
    probe = subprocess.run(
        [sys.executable, "-c", "from pipeline.sweep import SweepParams, init_ray\n"
         "import ray\ninit_ray(SweepParams(losses=['ce'], seeds=[0]), deterministic=True)\n"
         "print('webui', repr(ray.get_runtime_context().gcs_address and "
         "ray._private.worker.global_worker.node.address_info.get('webui_url')))\n"
         "ray.shutdown()"],
        cwd=ROOT, env={**STAGE_ENV, "RAY_ADDRESS": ""}, capture_output=True, text=True,
        timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "webui None" in probe.stdout or "webui ''" in probe.stdout, probe.stdout
    # ...and a `ray start --head` with a dashboard binds it to 127.0.0.1 unless told otherwise.
    ray = str(Path(sys.executable).with_name("ray"))
    dashboard = free_port()
    env = {**STAGE_ENV, "RAY_ADDRESS": ""}
    def bound() -> list[str]:
        return [ip for ip, port in listening(set(psutil.pids())) if port == dashboard]

    # (--block, stopped by the process group it started: `ray stop` would stop every Ray on
    # the machine, other tests' too)
    head = start([ray, "start", "--head", "--block", "--port", str(free_port()), "--num-cpus",
                  "1", "--include-dashboard", "true", "--dashboard-port", str(dashboard),
                  "--disable-usage-stats"], lambda: bool(bound()), tmp_path / "ray-head.log",
                 env=env)
    try:
        assert set(bound()) == {"127.0.0.1"}, bound()
    finally:
        stop(head, timeout=60)
    covered("exposure checks", "Ray: no dashboard in the sweep; ray start's binds 127.0.0.1")


def test_no_secret_of_the_environment_reaches_mlflow_results_or_reports(study, covered):
    written = [study / "mlflow.db", *(study / "mlartifacts").rglob("*"),
               *(study / "results").rglob("*"), *(study / "reports").rglob("*"),
               *(study / "work_dirs").rglob("*.json")]
    files = [p for p in written if p.is_file()]
    assert len(files) > 20
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    covered("exposure checks", f"no secret from 4 env vars in {len(files)} written files")
