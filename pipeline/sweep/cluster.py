"""The Ray the sweep runs on: its own on this machine, or a cluster it joins; whether a trial
fits there and how many run at once.

Without RAY_ADDRESS the sweep starts a Ray of its own (`address="local"`), even beside another
one on this machine; with RAY_ADDRESS, or inside `ray job submit`, it joins that cluster.
"""
from __future__ import annotations

import os

from ..determinism import determinism
from ..params import ParamsError
from .plan import SweepParams
from .trial import FAIL_AT_ENV, FAULT_ENV

#: Settings of the driver's environment that the workers need as they are: the S3-compatible
#: endpoint and region of the storage (credentials stay in the nodes' own environment).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def in_job() -> bool:
    """This process is the entrypoint of a `ray job submit` job."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def on_cluster() -> bool:
    """RAY_ADDRESS names a cluster, or this is a `ray job submit` job: the sweep joins it."""
    return bool(os.environ.get("RAY_ADDRESS")) or in_job()


def check_local_resources(sweep: SweepParams) -> None:
    """gpus_per_trial / workers larger than this machine fail before Ray starts."""
    if sweep.use_gpu:
        import torch  # only to count GPUs: CPU sweeps skip the import

        if sweep.gpus_per_trial > torch.cuda.device_count():
            raise ParamsError(f"params.yaml: sweep.gpus_per_trial is {sweep.gpus_per_trial} "
                              f"but this machine has {torch.cuda.device_count()} GPU(s); set "
                              "it to 0 for CPU trials or set RAY_ADDRESS to a cluster")
    cpus = os.cpu_count() or 1
    needed = sweep.workers * sweep.cpus_per_worker
    if needed > cpus:
        raise ParamsError(f"params.yaml: sweep.cpu_workers_per_trial x sweep.cpus_per_worker = "
                          f"{needed} CPUs per trial, but this machine has {cpus}")


def _holds(resources: dict, needed: dict[str, int]) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in needed.items() if amount)


def check_cluster_resources(sweep: SweepParams, log=None) -> None:
    """Fail only when no node of the cluster could ever hold one trial (its workers share a
    node: STRICT_PACK). On an autoscaling cluster the node types count, not the nodes up now: a
    trial that fits a node type waits for the autoscaler, with a warning."""
    import ray
    from ray._private.state import state

    needed = sweep.resources_per_trial()
    what = ", ".join(f"{n:g} {name}" for name, n in needed.items() if n)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(_holds(resources, needed) for resources in nodes):
        return
    config = state.get_cluster_config()  # set by an autoscaler: its node types
    node_types = [dict(group.resources) for group in getattr(config, "node_group_configs", [])
                  if group.max_count != 0]
    if any(_holds(resources, needed) for resources in node_types):
        (log or print)(f"warning: no node up now holds a trial ({what} on one node); the "
                       f"trials wait for the autoscaler to add one")
        return
    largest = max(nodes + node_types, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)),
                  default={})
    key = "gpus_per_trial" if sweep.use_gpu else "cpu_workers_per_trial"
    raise ParamsError(f"params.yaml: sweep.{key}: a trial needs {what} on one node (its DDP "
                      f"workers are packed on one node), but no node "
                      f"{'type ' if node_types else ''}of the Ray cluster has that much (the "
                      f"largest has {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU)")


def worker_env(sweep: SweepParams, deterministic: bool) -> dict[str, str]:
    """Environment variables the sweep gives its Ray workers."""
    # Ray Train polls its workers every 2 s by default, which adds seconds to every short trial.
    env_vars = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S":
                os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")}
    # cuBLAS reads its workspace setting when a process makes its first handle: set it before.
    env_vars.update(determinism(deterministic, on_gpu=sweep.use_gpu).env)
    for name in (*FORWARDED_ENV, FAULT_ENV, FAIL_AT_ENV):
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    return env_vars


def init_ray(sweep: SweepParams, deterministic: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    env_vars = worker_env(sweep, deterministic)
    os.environ.update(env_vars)
    # Inside `ray job submit` the job's runtime env (its working dir) applies already; otherwise
    # ship this checkout the same way (git-ignored data, .venv and outputs stay here).
    runtime_env = None if in_job() else {"working_dir": ".", "env_vars": env_vars}
    if on_cluster():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", runtime_env=runtime_env,
                 log_to_driver=False)
    else:
        # A Ray of its own on this machine, even when another one runs here (`ray start`, a
        # second study): plain ray.init() would join that one. Dashboard off, 127.0.0.1 only.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=False)


def concurrency(sweep: SweepParams, pending: int) -> int | None:
    """How many trials Tune runs at once; None: no limit.

    A Ray of the sweep's own (this machine) never grows: as many trials as it holds. On a
    cluster, `sweep.max_concurrent_trials` or no limit: a trial that finds no free node waits,
    its Ray Train workers retrying their placement, which is also the demand an autoscaler
    answers; nodes that join later take the waiting trials.
    """
    import ray

    if on_cluster():
        return min(sweep.max_concurrent_trials, pending) if sweep.max_concurrent_trials \
            else None
    fits = int(min(ray.cluster_resources().get(r, 0) // n
                   for r, n in sweep.resources_per_trial().items() if n))
    return max(1, min(sweep.max_concurrent_trials or fits, fits, pending))


