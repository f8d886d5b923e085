"""A multi-node Ray cluster on 127.0.0.1, hosted by a process of its own for the tests:

    PYTHONPATH=tests/loopback python -m tests.ray_cluster_host <address-file> <cpus> [<cpus> ...]

one node per CPU count (the first is the head). Once every node is up it writes the cluster's
address and node ids to <address-file>; SIGTERM shuts the nodes down. Processes that join it
need tests/loopback on their PYTHONPATH too (see its sitecustomize.py).
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


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


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    host_cluster(Path(sys.argv[1]), [int(n) for n in sys.argv[2:]])
