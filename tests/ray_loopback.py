"""Ray on 127.0.0.1 only, for the tests: a multi-node cluster host, and a driver that joins it.

    python -m tests.ray_loopback cluster <address-file> <cpus of node 1> [<cpus of node 2> ...]
    python -m tests.ray_loopback run <module> [args...]   # e.g. run pipeline.sweep synthetic_voc

Ray's `ray.init` rewrites a 127.0.0.1 address into this machine's network address, where a
loopback-only cluster does not listen; both commands keep it as given. Nothing else changes:
`run` is the module's own command line.
"""
from __future__ import annotations

import runpy
import signal
import sys
import time
from pathlib import Path


def _keep_loopback() -> None:
    import ray._private.services

    ray._private.services.resolve_ip_for_localhost = lambda host: host


def host_cluster(address_file: Path, cpus: list[int]) -> None:
    from ray.cluster_utils import Cluster

    # `stop` sends SIGTERM: shut the nodes down in the `finally` below, not by dying.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    local = dict(node_ip_address="127.0.0.1", include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=cpus[0], **local))
    for n in cpus[1:]:
        cluster.add_node(num_cpus=n, **local)
    cluster.wait_for_nodes()
    ids = [cluster.head_node.node_id, *(node.node_id for node in cluster.worker_nodes)]
    staging = address_file.with_suffix(".tmp")
    staging.write_text(" ".join([cluster.address, *ids]) + "\n")
    staging.replace(address_file)  # whole, once the nodes are up
    try:
        while True:
            time.sleep(3600)
    finally:
        cluster.shutdown()


def main() -> None:
    _keep_loopback()
    command, *args = sys.argv[1:]
    if command == "cluster":
        host_cluster(Path(args[0]), [int(n) for n in args[1:]])
    elif command == "run":
        sys.argv = [args[0], *args[1:]]
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
