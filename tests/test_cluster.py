"""Where a sweep's trials run: a local sweep's own Ray beside another one on the machine, and a
trial's workers packed on one node of a multi-node Ray cluster (all on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, study_params, sweep
from tests.servers import stop

pytestmark = pytest.mark.slow  # real Ray: a local one beside another, and a 2-node cluster


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


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A Ray cluster of a 1-CPU head and a 2-CPU node, joined by this process (the driver)."""
    import ray
    import ray._private.services
    from ray.cluster_utils import Cluster

    # The nodes bind 127.0.0.1 only (test traffic stays on loopback). A driver's ray.init turns
    # a 127.0.0.1 address into this machine's network address, where nothing listens: keep it.
    monkeypatch.setattr(ray._private.services, "resolve_ip_for_localhost", lambda host: host)
    local = dict(node_ip_address="127.0.0.1", include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, **local))
    big = cluster.add_node(num_cpus=2, **local)
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.chdir(ROOT)  # the sweep ships this checkout as the job's working_dir
    try:
        yield big
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_trials_workers_share_one_node_of_the_cluster(tmp_path, tiny_data, two_node_cluster):
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
    assert trial["nodes"] == [two_node_cluster.node_id]  # both ranks on the 2-CPU node

    # 3 CPUs in the cluster, but on no one node: a clear error, not a trial split over nodes
    assert ray.cluster_resources()["CPU"] == 3
    three_workers = study_params(tmp_path, tiny_data, sweep=dict(
        losses=["ce"], cpu_workers_per_trial=3, scale_lr=True))
    with pytest.raises(ParamsError) as error:
        run_sweep("synthetic_voc", three_workers, tmp_path / "results")
    assert "sweep.cpu_workers_per_trial: a trial needs 3 CPU on one node" in str(error.value)
    assert "the largest has 2 CPU" in str(error.value)


def test_an_autoscaler_node_type_that_fits_makes_trials_wait_not_fail(two_node_cluster):
    """With an autoscaler's cluster config in the GCS (its node types, as Ray Train reads
    them), a trial no node up now can hold is a warning: it waits for the autoscaler. A trial
    no node type can hold is still an error."""
    import ray
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_put

    from pipeline.params import ParamsError
    from pipeline.sweep import SweepParams, check_cluster_resources

    ray.init(address=os.environ["RAY_ADDRESS"])
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="cpu4", max_count=2)
    group.resources["CPU"] = 4
    _internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(),
                     namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)

    logged = []
    check_cluster_resources(SweepParams(losses=["ce"], seeds=[0], cpu_workers_per_trial=4),
                            logged.append)
    assert len(logged) == 1 and "wait for the autoscaler" in logged[0]
    with pytest.raises(ParamsError, match="no node type of the Ray cluster"):
        check_cluster_resources(SweepParams(losses=["ce"], seeds=[0], cpu_workers_per_trial=5))
    check_cluster_resources(SweepParams(losses=["ce"], seeds=[0], cpu_workers_per_trial=2),
                            logged.append)  # a node up now holds it: nothing said
    assert len(logged) == 1
