"""Where a sweep's trials run, and what they survive: a local sweep's own Ray beside another one
on the machine; on a Ray cluster on 127.0.0.1 (a 1-CPU head and a 2-CPU node, started once for
the module), a trial's workers packed on one node, and a node lost mid-trial as a spot cluster
loses one.

A lost node is killed (its raylet and every worker on it) once the trial has checkpoints in the
storage, and a fresh node joins. On both trial paths (a TorchTrainer of 2 ranks, and a
single-worker trial training in its Tune trial), the trial resumes on the new node from its
last whole checkpoint (or the one it saved on a preemption notice), the sweep ends with exit
status 0, and the trial's history and MLflow hold each evaluation once, its nodes both."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, study_params, sweep
from tests.servers import stop

pytestmark = pytest.mark.slow  # real Ray: a local one beside another, and a 2-node cluster

ITERATIONS, EVERY = 40, 8  # a lost node after 2 of 5 evaluations and checkpoints
#: The test cluster's nodes bind 127.0.0.1 only: test traffic stays on loopback.
LOCAL = dict(node_ip_address="127.0.0.1", include_dashboard=False)


def test_a_local_sweep_starts_its_own_ray_beside_another(tmp_path, tiny_data):
    """A `ray start --head` left running on the machine: plain ray.init() would join it and
    fail on num_cpus; the sweep starts a Ray of its own and leaves the other alone."""
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_ADDRESS": ""}
    other = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(free_port()), "--num-cpus", "1", "--include-dashboard", "false",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        status = None
        for _ in range(60):  # until the other Ray answers
            assert other.poll() is None, "ray start --head did not stay up"
            status = subprocess.run([ray, "status"], capture_output=True, text=True,
                                    timeout=60, env={**env, "RAY_AUTH_MODE": "token"})
            if status.returncode == 0:
                break
            time.sleep(1)
        assert status is not None and status.returncode == 0, status.stderr[-2000:]

        done = sweep(study_params(tmp_path, tiny_data, sweep=dict(losses=["ce"])), tmp_path,
                     env={"RAY_ADDRESS": ""})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "num_cpus and num_gpus must not be provided" not in done.stderr
        (trial,) = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())["trials"]
        assert trial["status"] == "finished"
        assert other.poll() is None  # the other Ray is still up, untouched
    finally:
        stop(other, timeout=60)  # ray start --block stops the processes it started


@pytest.fixture(scope="module")
def nodes():
    """A Ray cluster of a 1-CPU head (the driver's node, never taken back) and a 2-CPU node,
    for the whole module: a test that takes the 2-CPU node away adds a fresh one."""
    import ray._private.services
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        # A driver's ray.init turns a 127.0.0.1 address into this machine's network address,
        # where nothing listens: keep it.
        patch.setattr(ray._private.services, "resolve_ip_for_localhost", lambda host: host)
        # the nodes' processes inherit it: Ray Train looks for drained nodes every 0.5 s, not 5
        patch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.5")
        cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, **LOCAL))
        cluster.add_node(num_cpus=2, **LOCAL)
        cluster.wait_for_nodes()
        try:
            yield cluster
        finally:
            cluster.shutdown()


@pytest.fixture
def cluster(nodes, monkeypatch):
    """The module's cluster, its 2-CPU node up, joined by this process (the driver)."""
    import ray

    if not nodes.worker_nodes:  # a test that failed between taking a node and adding one
        nodes.add_node(num_cpus=2, **LOCAL)
        nodes.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", nodes.address)
    monkeypatch.chdir(ROOT)  # the sweep ships this checkout as the job's working_dir
    try:
        yield nodes
    finally:
        ray.shutdown()


def test_a_trials_workers_share_one_node_of_the_cluster(tmp_path, tiny_data, cluster):
    import ray

    from pipeline.params import ParamsError
    from pipeline.sweep import run_sweep, scaling_config

    assert scaling_config(2, use_gpu=True, cpus_per_worker=1).placement_strategy == "STRICT_PACK"

    two_workers = study_params(tmp_path, tiny_data, train=dict(batch_size=2),
                               sweep=dict(losses=["ce"], cpu_workers_per_trial=2))
    with pytest.raises(ParamsError, match="must be a folder every node mounts"):
        run_sweep("synthetic_voc", two_workers, tmp_path / "results")  # no such folder
    (tmp_path / "sweeps").mkdir()  # on this one machine, every node sees it
    results = run_sweep("synthetic_voc", two_workers, tmp_path / "results")
    (trial,) = results["trials"]
    assert trial["status"] == "finished" and trial["world_size"] == 2
    (big,) = cluster.worker_nodes
    assert trial["nodes"] == [big.node_id]  # both ranks on the 2-CPU node

    # 3 CPUs in the cluster, but on no one node: a clear error, not a trial split over nodes
    assert ray.cluster_resources()["CPU"] == 3
    three_workers = study_params(tmp_path, tiny_data, sweep=dict(
        losses=["ce"], cpu_workers_per_trial=3, scale_lr=True))
    with pytest.raises(ParamsError) as error:
        run_sweep("synthetic_voc", three_workers, tmp_path / "results")
    assert "sweep.cpu_workers_per_trial: a trial needs 3 CPU on one node" in str(error.value)
    assert "the largest has 2 CPU" in str(error.value)


def test_an_autoscaler_node_type_that_fits_makes_trials_wait_not_fail(cluster):
    """With an autoscaler's cluster config in the GCS (its node types, as Ray Train reads
    them), a trial no node up now can hold is a warning: it waits for the autoscaler. A trial
    no node type can hold is still an error."""
    import ray
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from pipeline.params import ParamsError
    from pipeline.sweep import SweepParams, check_cluster_resources

    ray.init(address=os.environ["RAY_ADDRESS"])
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="cpu4", max_count=2)
    group.resources["CPU"] = 4
    key = dict(key=ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY,
               namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)
    _internal_kv_put(value=config.SerializeToString(), **key)
    try:
        logged = []
        check_cluster_resources(SweepParams(losses=["ce"], seeds=[0], cpu_workers_per_trial=4),
                                logged.append)
        assert len(logged) == 1 and "wait for the autoscaler" in logged[0]
        with pytest.raises(ParamsError, match="no node type of the Ray cluster"):
            check_cluster_resources(SweepParams(losses=["ce"], seeds=[0],
                                                cpu_workers_per_trial=5))
        check_cluster_resources(SweepParams(losses=["ce"], seeds=[0], cpu_workers_per_trial=2),
                                logged.append)  # a node up now holds it: nothing said
        assert len(logged) == 1
    finally:  # the module's other tests run on a cluster without an autoscaler
        _internal_kv_del(**key)


# --- a node lost mid-trial ---------------------------------------------------------------------

def sweep_in_background(params, tmp_path) -> tuple[threading.Thread, dict]:
    """The sweep's driver in a thread of this process (joined to the cluster); its results
    land in the dict once it ends."""
    from pipeline.sweep import run_sweep

    (tmp_path / "sweeps").mkdir()  # every node of this machine sees it
    outcome = {}
    driver = threading.Thread(target=lambda: outcome.update(
        results=run_sweep("synthetic_voc", params, tmp_path / "results")))
    driver.start()
    return driver, outcome


def whole_checkpoints(folder) -> list[int]:
    return sorted(int(p.name.removeprefix("iter_")) for p in folder.glob("iter_*")
                  if (p / "eval_history.jsonl").is_file() and list(p.glob("*.pth")))


@pytest.mark.parametrize("path", ["torchtrainer", "in_trial"])
def test_a_node_lost_mid_trial_costs_at_most_one_checkpoint_interval(tmp_path, tiny_data,
                                                                     cluster, path):
    import mlflow

    workers = dict(cpu_workers_per_trial=2, cpus_per_worker=1) if path == "torchtrainer" else \
        dict(cpu_workers_per_trial=1, cpus_per_worker=2)  # 2 CPUs: only the spot node has them
    params = study_params(tmp_path, tiny_data,
                          train=dict(iterations=ITERATIONS, val_interval=EVERY, overlays=0,
                                     batch_size=2 if path == "torchtrainer" else None),
                          sweep=dict(losses=["ce"], seeds=[0], max_failures=3, **workers))
    driver, outcome = sweep_in_background(params, tmp_path)
    (spot,) = cluster.worker_nodes
    deadline = time.time() + 300
    killed_after = None
    while time.time() < deadline and driver.is_alive():
        folders = list((tmp_path / "sweeps" / "synthetic_voc").glob("ce_seed0_*"))
        saved = whole_checkpoints(folders[0]) if folders else []
        if saved and saved[-1] >= 2 * EVERY:
            killed_after = saved[-1]
            cluster.remove_node(spot, allow_graceful=False)  # the spot node is taken back
            cluster.add_node(num_cpus=2, **LOCAL)  # and another one joins
            break
        time.sleep(0.05)
    assert killed_after is not None and killed_after < ITERATIONS, "not killed mid-trial"
    driver.join(timeout=600)
    assert not driver.is_alive()
    (trial,) = outcome["results"]["trials"]
    assert trial["status"] == "finished", trial["error"]
    assert [h["iteration"] for h in trial["history"]] == list(range(EVERY, ITERATIONS + 1, EVERY))
    assert len(trial["nodes"]) == 2  # where it ran: the lost node, then the new one
    summary = json.loads((next((tmp_path / "sweeps" / "synthetic_voc").glob("ce_seed0_*"))
                          / "final" / "summary.json").read_text())
    # resumed from the last whole checkpoint: at most one interval trained twice
    assert summary["resumed_from"] >= killed_after
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(trial["mlflow_run_id"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "mIoU")]
    assert sorted(steps) == list(range(EVERY, ITERATIONS + 1, EVERY))  # each once
    assert set(run.data.tags["nodes"].split(",")) == set(trial["nodes"])


@pytest.mark.parametrize("workers", [dict(cpus_per_worker=2),
                                     dict(cpu_workers_per_trial=2, scale_lr=True)],
                         ids=["in-trial", "torch-trainer"])
def test_a_drained_node_gets_a_checkpoint_before_it_goes(tmp_path, tiny_data, cluster,
                                                        workers):
    """Ray's preemption notice (the node drained, as an autoscaler does before a spot node is
    reclaimed): the trial saves a checkpoint between its regular ones, and after the node is
    gone resumes from it. A single-worker trial asks Ray Core whether its node is draining; a
    TorchTrainer trial asks `ray.train.get_preemption_info()`."""
    import ray as ray_module
    import ray._raylet

    from pipeline.train import PREEMPTION_POLL

    # The one regular checkpoint is the last: one on the notice, at whichever multiple of
    # PREEMPTION_POLL it lands, is never a regular one (it was in CI: notice and checkpoint at 60)
    # the notice came 44 to 74 iterations after the drain here; an evaluation every 30 (not
    # more often: each is a Tune report and MLflow's metrics) leaves it 110 after the first
    every, iterations = 30, 180
    params = study_params(tmp_path, tiny_data,
                          train=dict(iterations=iterations, val_interval=every,
                                     checkpoint_interval=iterations, overlays=0),
                          sweep=dict(losses=["ce"], seeds=[0], max_failures=3,
                                     **workers))  # 2 CPUs: only the spot node has them
    driver, outcome = sweep_in_background(params, tmp_path)
    (spot,) = cluster.worker_nodes
    deadline = time.time() + 300
    # the trial trains on the spot node once Tune has its first evaluation (iteration 30)
    while time.time() < deadline and driver.is_alive() and not any(
            p.stat().st_size for p in (tmp_path / "sweeps" / "_ray_tune").rglob("result.json")):
        time.sleep(0.1)
    # what `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` (and an autoscaler) sends
    from ray.core.generated import autoscaler_pb2

    accepted, why = ray_module._raylet.GcsClient(address=cluster.address).drain_node(
        spot.node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot reclaim", int((time.time() + 60) * 1000))
    assert accepted, why
    saved, found = [], []
    try:
        while time.time() < deadline and driver.is_alive() and not saved:
            found = list((tmp_path / "sweeps" / "synthetic_voc").glob("ce_seed0_*"))
            saved = [n for n in whole_checkpoints(found[0]) if n < iterations] if found else []
            time.sleep(0.05)
        assert saved and saved[0] % PREEMPTION_POLL == 0, "no checkpoint on the notice"
    finally:  # the drained node goes, whatever happened: the module's next test needs another
        cluster.remove_node(spot, allow_graceful=False)
        cluster.add_node(num_cpus=2, **LOCAL)
    trial_dir = found[0]
    driver.join(timeout=600)
    (trial,) = outcome["results"]["trials"]
    assert trial["status"] == "finished", trial["error"]
    summary = json.loads((trial_dir / "final" / "summary.json").read_text())
    assert summary["resumed_from"] >= saved[0]  # not from iteration 0
    assert [h["iteration"] for h in trial["history"]] == list(range(every, iterations + 1, every))
