"""A node lost mid-trial, as a spot cluster loses one: on a Ray cluster on 127.0.0.1, the
node under a running trial is killed (its raylet and every worker on it) once the trial has
checkpoints in the storage, and a fresh node joins. On both trial paths (a TorchTrainer of 2
ranks, and a single-worker trial training in its Tune trial), the trial resumes on the new node
from its last whole checkpoint, the sweep ends with exit status 0, and the trial's history and
MLflow hold each evaluation once, its nodes both."""
from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import ROOT, study_params

pytestmark = pytest.mark.slow

ITERATIONS, EVERY = 40, 4


@pytest.fixture
def spot_cluster(monkeypatch):
    """A 1-CPU head (the driver's node, never taken back) and a 2-CPU spot node."""
    import ray
    import ray._private.services
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(ray._private.services, "resolve_ip_for_localhost", lambda host: host)
    # the nodes' processes inherit it: Ray Train looks for drained nodes every 0.5 s, not 5
    monkeypatch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.5")
    local = dict(node_ip_address="127.0.0.1", include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, **local))
    cluster.add_node(num_cpus=2, **local)
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.chdir(ROOT)
    try:
        yield cluster, local
    finally:
        ray.shutdown()
        cluster.shutdown()


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
                                                                     spot_cluster, path):
    import mlflow


    cluster, local = spot_cluster
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
            cluster.add_node(num_cpus=2, **local)  # and another one joins
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
def test_a_drained_node_gets_a_checkpoint_before_it_goes(tmp_path, tiny_data, spot_cluster,
                                                        workers):
    """Ray's preemption notice (the node drained, as an autoscaler does before a spot node is
    reclaimed): the trial saves a checkpoint between its regular ones, and after the node is
    gone resumes from it. A single-worker trial asks Ray Core whether its node is draining; a
    TorchTrainer trial asks `ray.train.get_preemption_info()`."""
    import ray as ray_module
    import ray._raylet

    from pipeline.train import PREEMPTION_POLL

    cluster, local = spot_cluster
    # The one regular checkpoint is the last: one on the notice, at whichever multiple of
    # PREEMPTION_POLL it lands, is never a regular one (it was in CI: notice and checkpoint at 60)
    every, iterations = 6, 180  # the notice came 44 to 74 iterations after the drain here
    params = study_params(tmp_path, tiny_data,
                          train=dict(iterations=iterations, val_interval=every,
                                     checkpoint_interval=iterations, overlays=0),
                          sweep=dict(losses=["ce"], seeds=[0], max_failures=3,
                                     **workers))  # 2 CPUs: only the spot node has them
    driver, outcome = sweep_in_background(params, tmp_path)
    (spot,) = cluster.worker_nodes
    deadline = time.time() + 300
    # the trial trains on the spot node once Tune has its first evaluation (iteration 6)
    while time.time() < deadline and driver.is_alive() and not any(
            p.stat().st_size for p in (tmp_path / "sweeps" / "_ray_tune").rglob("result.json")):
        time.sleep(0.1)
    # what `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` (and an autoscaler) sends
    from ray.core.generated import autoscaler_pb2

    accepted, why = ray_module._raylet.GcsClient(address=cluster.address).drain_node(
        spot.node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot reclaim", int((time.time() + 60) * 1000))
    assert accepted, why
    saved = []
    while time.time() < deadline and driver.is_alive() and not saved:
        found = list((tmp_path / "sweeps" / "synthetic_voc").glob("ce_seed0_*"))
        saved = [n for n in whole_checkpoints(found[0]) if n < iterations] if found else []
        time.sleep(0.05)
    trial_dir = found[0]
    assert saved and saved[0] % PREEMPTION_POLL == 0, "no checkpoint on the notice"
    cluster.remove_node(spot, allow_graceful=False)
    cluster.add_node(num_cpus=2, **local)
    driver.join(timeout=600)
    (trial,) = outcome["results"]["trials"]
    assert trial["status"] == "finished", trial["error"]
    summary = json.loads((trial_dir / "final" / "summary.json").read_text())
    assert summary["resumed_from"] >= saved[0]  # not from iteration 0
    assert [h["iteration"] for h in trial["history"]] == list(range(every, iterations + 1, every))
