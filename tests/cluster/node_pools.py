"""Kwok GPU nodes that only one test's runs select (a `type=<unique>` label), so that the session
cluster's other GPUs and runs do not enter that test's counts."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator

from accordion_dev.cluster import Cluster, kwok_node, wait_nodes_ready
from accordion_dev.polling import poll


@contextlib.contextmanager
def kwok_gpu_pool(
    cluster: Cluster, prefix: str, nodes: int = 2, gpus_per_node: int = 8
) -> Iterator[dict[str, str]]:
    """Adds `nodes` tainted kwok nodes of `gpus_per_node` GPUs and yields the node selector that
    picks them; removes them afterwards."""
    pool = f"{prefix}-{secrets.token_hex(3)}"
    names = [f"{pool}-{i}" for i in range(nodes)]
    with cluster.http() as http:
        for name in names:
            node = kwok_node(name, gpus_per_node, "NVIDIA-H100-80GB-HBM3", gpu_taint=True)
            node["metadata"]["labels"]["type"] = pool
            r = http.post("/api/v1/nodes", json=node)
            assert r.status_code == 201, r.text
        try:
            wait_nodes_ready(cluster, nodes, selector=f"type={pool}")
            yield {"type": pool}
        finally:
            # The pods go (with their namespaces) while kwok still runs their nodes: pods left
            # on a deleted node wait for the pod garbage collector, and the session's teardown
            # waits for every test namespace to be gone.
            def left() -> int:
                return sum(
                    len(
                        http.get(
                            "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={name}"}
                        ).json()["items"]
                    )
                    for name in names
                )

            t = time.monotonic()
            with contextlib.suppress(TimeoutError):
                poll(lambda: left() == 0, 60, "the test's pods to be deleted", every=0.5)
            print(f"[{prefix}] pods deleted {time.monotonic() - t:.1f} s after their namespaces")
            for name in names:
                http.delete(f"/api/v1/nodes/{name}")
