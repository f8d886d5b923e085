"""The study on a Ray cluster without a shared filesystem, every part real and on 127.0.0.1: a
2-node Ray cluster, the sweep's storage on an S3 API (moto), MLflow as a tracking server on
PostgreSQL with its artifacts on the same S3, and a DVC remote there too."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    GIT,
    ROOT,
    STAGE_ENV,
    TINY_DATA,
    dvc,
    free_port,
    project_copy,
    study_params,
)
from tests.servers import (
    LOOPBACK,
    MlflowServer,
    postgres_server,
    ray_cluster,
    s3_server,
    start,
    stop,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """S3, PostgreSQL, an MLflow server on both, and a Ray cluster of two 1-CPU nodes."""
    tmp = tmp_path_factory.mktemp("stack")
    with s3_server(tmp) as s3, postgres_server() as database:
        env = {k: v for k, v in s3.items() if k.isupper()}
        tracking = MlflowServer(tmp, database, f"s3://{s3['bucket']}/mlartifacts", env)
        tracking.start()
        try:
            with ray_cluster(tmp, [1, 1], env) as (address, nodes):
                yield {"s3": s3, "env": env, "tracking": tracking, "address": address,
                       "nodes": nodes}
        finally:
            tracking.stop()


def objects(stack, prefix: str) -> dict[str, str]:
    """Key -> ETag of every object under `prefix` of the bucket."""
    client, bucket = stack["s3"]["client"], stack["s3"]["bucket"]
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return found


def read_object(stack, key: str) -> dict:
    body = stack["s3"]["client"].get_object(Bucket=stack["s3"]["bucket"], Key=key)["Body"]
    return json.loads(body.read())


def rest(stack, path: str, body: dict | None = None) -> dict:
    """MLflow's REST API, as any client of the server reads it."""
    url = f"{stack['tracking'].url}/api/2.0/mlflow/{path}"
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def children(stack, experiment: str = "pixiou-study") -> list[dict]:
    (found,) = [e for e in rest(stack, "experiments/search", {"max_results": 100})
                ["experiments"] if e["name"] == experiment]
    runs = rest(stack, "runs/search", {"experiment_ids": [found["experiment_id"]],
                                       "max_results": 1000}).get("runs", [])
    tagged = [(run, {t["key"]: t["value"] for t in run["data"].get("tags", [])})
              for run in runs]
    return [dict(run, tags=tags) for run, tags in tagged if "mlflow.parentRunId" in tags]


def cluster_env(stack) -> dict:
    """What a driver on a login node sets: the cluster, the tracking server, the S3 endpoint
    (and, for the test cluster's 127.0.0.1, tests/loopback)."""
    return {**STAGE_ENV, **stack["env"], **LOOPBACK, "RAY_ADDRESS": stack["address"],
            "MLFLOW_TRACKING_URI": stack["tracking"].url}


def driver(stack, params: Path, results: Path, cwd: Path = ROOT, extra_env: dict | None = None,
           **popen):
    """`python -m pipeline.sweep synthetic_voc`, the sweep's driver, joining the cluster."""
    env = {**cluster_env(stack), **(extra_env or {})}
    args = [sys.executable, "-m", "pipeline.sweep", "synthetic_voc", "--params", str(params),
            "--results-dir", str(results)]
    if popen:
        return subprocess.Popen(args, cwd=cwd, env=env, start_new_session=True, **popen)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _with_a_whole_checkpoint(keys) -> set[str]:
    """The trials with an iter_<n> checkpoint whose history, written last, is there: one cut
    short by the kill is not resumed from (pipeline/sweep/checkpoints.py)."""
    from pipeline.train import HISTORY

    return {k.split("/")[2] for k in keys if "/iter_" in k and k.endswith("/" + HISTORY)}


def test_a_sweep_on_two_nodes_keeps_its_trials_in_s3_and_survives_kill_9(tmp_path, tiny_data,
                                                                         stack):
    params = study_params(tmp_path, tiny_data, train=dict(iterations=30, val_interval=10),
                          sweep=dict(losses=["ce", "lovasz", "pixiou"], max_concurrent_trials=2,
                                     storage="s3://study/sweeps"))
    prefix = "sweeps/synthetic_voc/"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        first = driver(stack, params, tmp_path / "results", stdout=out, stderr=subprocess.STDOUT)
    # kill -9 once a trial has finished and another has a whole checkpoint but no final one
    deadline = time.time() + 600
    while True:
        keys = objects(stack, prefix)
        finished = {k.split("/")[2] for k in keys if k.endswith("/final/summary.json")}
        started = _with_a_whole_checkpoint(keys) - finished
        if finished and started:
            break
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no trial finished in 600 s"
        time.sleep(0.5)
    first.kill()
    first.wait()
    # A trial's workers may still upload its final checkpoint while Ray tears the dead driver's
    # job down: take the storage as the rerun will find it, once it no longer changes.
    keys, settled = objects(stack, prefix), time.time() + 60
    while time.time() < settled:
        time.sleep(5)
        now = objects(stack, prefix)
        if now == keys:
            break
        keys = now
    finished = {k.split("/")[2] for k in keys if k.endswith("/final/summary.json")}
    started = _with_a_whole_checkpoint(keys) - finished
    done_before = {k: v for k, v in keys.items()
                   if k.split("/")[2] in finished and "/final/" in k}

    again = driver(stack, params, tmp_path / "results")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"3 trials, {len(finished)} already done, {3 - len(finished)} to run" in again.stdout
    results = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["finished"] * 3
    assert all(t["storage"].startswith("s3://study/sweeps/synthetic_voc/")
               for t in results["trials"])
    # the finished trials were not trained again: their final checkpoint is the same object
    assert {k: v for k, v in objects(stack, prefix).items() if k in done_before} == done_before
    for name in started:  # the unfinished trial went on from its last checkpoint in S3
        summary = read_object(stack, f"{prefix}{name}/final/summary.json")
        assert summary["resumed_from"] >= 10, summary["resumed_from"]
    # the storage keeps the last and the best checkpoints of a trial, not every one (a trial
    # that finished as the driver was killed may keep one that Ray had yet to delete)
    for trial in (t for t in results["trials"] if t["trial"] not in finished):
        kept = {k.split("/")[3] for k in objects(stack, f"{prefix}{trial['trial']}/")
                if k.split("/")[3].startswith(("iter_", "final"))}
        assert "final" in kept and len(kept) <= 2, kept
    assert read_object(stack, f"{prefix}results.json") == results  # for --fetch

    # nothing of a trial was written on the driver's side
    assert not (ROOT / "s3:").exists() and not (tmp_path / "sweeps").exists()
    names = {t["trial"] for t in results["trials"]}
    assert not [p for p in (ROOT / "work_dirs").rglob("*") if p.name in names] \
        if (ROOT / "work_dirs").is_dir() else True

    # MLflow, through the server: one child per trial, on both nodes of the cluster
    runs = children(stack)
    ours = [r for r in runs if r["tags"].get("pixiou.trial_key") in
            {t["key"] for t in results["trials"]}]
    assert sorted(r["tags"]["pixiou.trial_key"] for r in ours) == \
        sorted(t["key"] for t in results["trials"])
    assert all(r["info"]["status"] == "FINISHED" for r in ours)
    nodes = {node for r in ours for node in r["tags"]["nodes"].split(",")}
    assert nodes == set(stack["nodes"])  # two trials at once: one on each 1-CPU node


#: MLflow's own retries of a request, cut from their defaults (7 retries, back-off factor 2:
#: about 4 minutes) so that an outage longer than them fits in a test.
MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _mlflow_gives_up_after(url: str) -> float:
    """Seconds an MLflow client (with MLFLOW_RETRIES) takes to give up on a server that is
    down: measured, not assumed."""
    probe = ("import time, mlflow\nstart = time.monotonic()\ntry:\n"
             f"    mlflow.MlflowClient('{url}').search_experiments()\n"
             "except Exception:\n    print(time.monotonic() - start)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, **MLFLOW_RETRIES}, timeout=300)
    return float(done.stdout.strip().splitlines()[-1])


def test_a_tracking_server_outage_loses_no_evaluation(tmp_path, tiny_data, stack):
    params = study_params(tmp_path, tiny_data, train=dict(iterations=120, val_interval=10),
                          sweep=dict(losses=["ce"], storage="s3://study/outage"),
                          tracking=dict(experiment="outage"))
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        running = driver(stack, params, tmp_path / "results", stdout=out,
                         stderr=subprocess.STDOUT, extra_env=MLFLOW_RETRIES)
    deadline = time.time() + 300
    while "eval   ce_seed0" not in log.read_text():  # the first evaluation was logged
        assert running.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    stack["tracking"].stop()
    outage_started = time.time()
    landed = set(objects(stack, "outage/"))
    gives_up = _mlflow_gives_up_after(stack["tracking"].url)
    time.sleep(max(0.0, max(2 * gives_up, 15.0) - (time.time() - outage_started)))
    outage = time.time() - outage_started
    during = {k for k in objects(stack, "outage/") if k not in landed and "/iter_" in k}
    stack["tracking"].start()
    assert outage > gives_up  # longer than MLflow's own retries
    print(f"MLflow gave up after {gives_up:.1f} s; the outage lasted {outage:.1f} s")
    assert during, "no checkpoint landed in the storage during the outage"
    assert running.wait(timeout=600) == 0, log.read_text()[-3000:]
    said = log.read_text()
    assert "warning: MLflow" in said  # writes failed in the outage ...
    assert "MLflow missed writes during the sweep: logging them now" in said  # made up for

    (child,) = children(stack, "outage")
    assert child["info"]["status"] == "FINISHED"
    history = rest(stack, f"metrics/get-history?run_id={child['info']['run_id']}"
                          "&metric_key=mIoU")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(10, 121, 10))  # each once
    files = {f["path"] for f in rest(stack, f"artifacts/list?run_id={child['info']['run_id']}")
             ["files"]}
    assert {"config.py", "summary.json", "confusion_matrix.png", "overlays"} <= files
    # the artifacts went through the server to S3
    assert any(k.endswith("/confusion_matrix.png") for k in objects(stack, "mlartifacts/"))


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_study(params: dict) -> None:
    params["study"]["datasets"] = ["synthetic_voc"]
    params["datasets"]["synthetic_voc"].update(TINY_DATA)
    params["pretrain"].update(iterations=4, val_interval=2, early_iteration=2)
    params["sweep"]["convergence"]["losses"] = []


def test_a_dvc_remote_on_s3_brings_the_dataset_to_a_clone_and_to_every_node(tmp_path, stack,
                                                                           monkeypatch):
    from pipeline.sweep.datasets import DatasetMismatch, dataset_folder
    from pipeline.sweep.plan import DataSourceParams, dataset_version

    env = stack["env"]
    repo = project_copy(tmp_path / "project", _tiny_study)
    url = env["AWS_ENDPOINT_URL"]
    for args in (["remote", "add", "-d", "storage", "s3://study/dvc"],
                 ["remote", "modify", "storage", "endpointurl", url],
                 ["repro", "pretrain@synthetic_voc"], ["push"]):
        dvc(repo, *args, env=env, check=True)
    for args in (["add", "-A"], ["commit", "-qm", "dvc.lock and the remote"]):
        subprocess.run(GIT + args, cwd=repo, check=True)

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    dvc(clone, "pull", env=env, check=True)
    original = _tree_digest(repo / "data" / "synthetic_voc")
    assert _tree_digest(clone / "data" / "synthetic_voc") == original  # byte-identical

    # staged onto a node: the version dvc.lock names, from the remote, verified, once
    cache = tmp_path / "node-cache"
    for name, value in env.items():  # this process plays the node: its AWS settings
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(clone)
    version = dataset_version("synthetic_voc", "data",
                              DataSourceParams(source="dvc", cache=str(cache)))
    monkeypatch.chdir(ROOT)
    assert version.remote == {"url": "s3://study/dvc", "endpointurl": url}
    folder = dataset_folder(version)
    assert folder.is_relative_to(cache) and _tree_digest(folder) == original
    stamp = (folder.parent / ".complete").stat().st_mtime_ns
    assert dataset_folder(version) == folder
    assert (folder.parent / ".complete").stat().st_mtime_ns == stamp  # pulled once
    # a node's copy is not trusted forever: a file lost or cut short is restored by DVC
    images = sorted((folder / "VOCdevkit" / "VOC2012" / "JPEGImages").iterdir())
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:10])
    assert dataset_folder(version) == folder and _tree_digest(folder) == original
    tampered = type(version)(**{**version.to_dict(), "content_sha256": "0" * 64})
    with pytest.raises(DatasetMismatch, match="keyed for synthetic_voc 000000000000"):
        dataset_folder(tampered)

    # a sweep whose trials read the dataset from the remote, and whose driver finds the model
    # they fine-tune there too (as inside a Ray job, which gets no DVC outputs)
    pretrained = json.loads((repo / "models/pretrain/synthetic_voc/summary.json").read_text())
    shutil.rmtree(clone / "models")

    def staged(params):
        _tiny_study(params)
        params["train"].update(iterations=4, val_interval=2)
        params["sweep"].update(losses=["ce"], seeds=[0], storage="s3://study/staged",
                               data={"source": "dvc", "cache": str(tmp_path / "cluster-cache")},
                               convergence={"losses": ["ce"], "iterations": 4,
                                            "val_interval": 2})
    params = yaml.safe_load((clone / "params.yaml").read_text())
    staged(params)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = driver(stack, clone / "params.yaml", clone / "results", cwd=clone)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((clone / "results" / "synthetic_voc.json").read_text())
    trial, arm = results["trials"]
    assert trial["status"] == arm["status"] == "finished"
    assert results["start"]["sha256"] == pretrained["sha256"]
    assert trial["history"][0] == {**trial["history"][0], "iteration": 0,
                                   "mIoU": pretrained["mIoU"]}
    # the convergence arm starts from the early weights the same pull brought
    assert arm["arm"] == "convergence" and arm["start"]["sha256"] == pretrained["early"]["sha256"]
    assert arm["history"][0]["mIoU"] == pretrained["early"]["mIoU"]
    (pulled,) = (tmp_path / "cluster-cache").glob("synthetic_voc-*/synthetic_voc")
    assert _tree_digest(pulled) == original


def test_ray_job_submit_keeps_its_results_in_the_storage_and_mlflow(tmp_path, tiny_data, stack):
    ray = str(Path(sys.executable).with_name("ray"))

    def edit(params):
        params["study"]["datasets"] = ["synthetic_voc"]
        # a job that fine-tunes gets the pretrain model from the DVC remote (the test above)
        params["study"]["protocol"] = "scratch"
        params["train"].update(iterations=4, val_interval=2)
        params["sweep"].update(losses=["ce"], seeds=[0], storage="s3://study/job",
                               data={"path": str(tiny_data)}, convergence={"losses": []})
    project = project_copy(tmp_path / "project", edit)
    gcs, dashboard = free_port(), free_port()
    env = {**stack["env"], "RAY_ADDRESS": ""}
    head = start([ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                  "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                  # the stack's cluster holds the agent's default port on this machine
                  "--dashboard-agent-listen-port", str(free_port()),
                  "--disable-usage-stats"], lambda: True, tmp_path / "head.log", env=env)
    job_env = {**os.environ, **env, "RAY_AUTH_MODE": "token"}  # the cluster's token, ~/.ray

    def submit(*runtime_env: str) -> subprocess.CompletedProcess:
        deadline = time.time() + 180
        while True:
            job = subprocess.run(
                [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                 "--working-dir", ".", *runtime_env, "--", sys.executable, "-m", "pipeline.sweep",
                 "synthetic_voc"], cwd=project, capture_output=True, text=True, timeout=600,
                env=job_env)
            # the job agent comes up some seconds after the head
            if "No available agent" not in job.stderr + job.stdout and \
                    "Connection refused" not in job.stderr or time.time() > deadline:
                return job
            time.sleep(2)

    try:
        # a local MLflow file inside a job would be lost with the job: a clear error
        local = submit()
        assert local.returncode != 0
        assert "is a local file, but this sweep runs inside a Ray job" in local.stdout
        tracking = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": stack["tracking"].url}})
        job = submit("--runtime-env-json", tracking)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        stop(head, timeout=90)

    # the documented way back: fetch the results, then the report builds from them here
    assert not (project / "results").exists()
    fetched = subprocess.run([sys.executable, "-m", "pipeline.sweep", "synthetic_voc",
                              "--fetch"], cwd=project, capture_output=True, text=True,
                             env={**os.environ, **stack["env"]})
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    (trial,) = json.loads((project / "results" / "synthetic_voc.json").read_text())["trials"]
    assert trial["status"] == "finished" and trial["mlflow_run_id"]
    report = dvc(project, "repro", "--single-item", "report", env=stack["env"])
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert f"{trial['mIoU']:.2f}" in (project / "reports" / "tables.md").read_text()
    run = rest(stack, f"runs/get?run_id={trial['mlflow_run_id']}")["run"]
    assert run["info"]["status"] == "FINISHED"


def test_dvc_repro_on_a_login_node_runs_the_study_on_the_cluster(tmp_path, stack):
    """Way (a) of docs/cluster.md: `dvc repro` where the repository is, RAY_ADDRESS set; the
    trials run on the cluster and keep their state in S3, the outputs land here."""
    def edit(params):
        _tiny_study(params)
        params["train"].update(iterations=4, val_interval=2)
        params["sweep"].update(losses=["ce", "lovasz"], seeds=[0], storage="s3://study/repro")
        params["report"]["claims"] = [{"better": "lovasz", "worse": "ce", "metric": "mIoU",
                                       "source": "Berman et al. 2018"}]
    project = project_copy(tmp_path / "project", edit)
    env = cluster_env(stack)
    dvc(project, "repro", env=env, check=True, timeout=1200)
    results = json.loads((project / "results" / "synthetic_voc.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["finished", "finished"]
    names = {t["trial"] for t in results["trials"]}
    assert {k.split("/")[2] for k in objects(stack, "repro/synthetic_voc/")
            if k.endswith("/final/summary.json")} == names
    assert (project / "reports" / "tables.md").is_file()
    again = dvc(project, "repro", env=env, check=True)  # everything recorded in dvc.lock
    assert "Data and pipelines are up to date" in again.stdout
