"""How fast the local control plane creates and schedules pods onto kwok GPU nodes.

Creates N one-GPU pods (concurrently, like a controller would) on M kwok nodes with 8 GPUs each
and measures: API create throughput, time until every pod is bound by the real scheduler, and
time until kwok reports every pod Running.

    python -m benchmarks.cluster_pods [--pods 2000] [--nodes 250]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from typing import Any

import httpx

from accordion_dev.cluster import (
    GPU_TOLERATION,
    KWOK_TOLERATION,
    Cluster,
    add_kwok_nodes,
    wait_nodes_ready,
)
from benchmarks._common import private_cluster, write_result


def pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{i:05d}"},
        "spec": {
            "tolerations": [KWOK_TOLERATION, GPU_TOLERATION],
            "containers": [
                {"name": "w", "image": "trainer", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
            ],
        },
    }


async def create_all(c: Cluster, ns: str, n: int, concurrency: int) -> float:
    ctx = ssl.create_default_context(cafile=str(c.pki / "ca.crt"))
    ctx.load_cert_chain(str(c.pki / "admin.crt"), str(c.pki / "admin.key"))
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=c.server, verify=ctx, limits=limits, timeout=60) as http:

        async def one(i: int) -> None:
            async with sem:
                r = await http.post(f"/api/v1/namespaces/{ns}/pods", json=pod(i))
                r.raise_for_status()

        t = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=250)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    assert args.pods <= args.nodes * 8, "more pods than GPUs"
    with private_cluster() as c:
        t = time.monotonic()
        add_kwok_nodes(c, args.nodes, gpus=8)
        wait_nodes_ready(c, args.nodes, selector="type=kwok", timeout=300)
        nodes_s = time.monotonic() - t
        ns = "bench"
        with c.http() as http:
            http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).raise_for_status()
            while http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code != 200:
                time.sleep(0.1)
        start = time.monotonic()
        create_s = asyncio.run(create_all(c, ns, args.pods, args.concurrency))
        bound_s = running_s = None
        with c.http(timeout=120) as http:
            while running_s is None and time.monotonic() - start < 600:
                items = http.get(f"/api/v1/namespaces/{ns}/pods").json()["items"]
                now = time.monotonic() - start
                bound = sum(bool(p["spec"].get("nodeName")) for p in items)
                running = sum(p["status"].get("phase") == "Running" for p in items)
                if bound_s is None and bound == args.pods:
                    bound_s = now
                if running == args.pods:
                    running_s = now
                print(
                    f"\r[bench] {now:6.1f} s  created {len(items)}  bound {bound}  "
                    f"running {running}/{args.pods}",
                    end="",
                    flush=True,
                )
                time.sleep(0.5)
            print()
            per_node = {}
            for p in http.get(f"/api/v1/namespaces/{ns}/pods").json()["items"]:
                per_node[p["spec"]["nodeName"]] = per_node.get(p["spec"]["nodeName"], 0) + 1
        assert bound_s is not None, "pods were not all bound within 600 s"
        assert running_s is not None, "pods were not all Running within 600 s"
        assert max(per_node.values()) <= 8, "a node got more pods than GPUs"
    write_result(
        "cluster_pods",
        {
            "params": vars(args),
            "nodes_ready_s": round(nodes_s, 2),
            "create_s": round(create_s, 2),
            "create_pods_per_s": round(args.pods / create_s, 1),
            "all_bound_s": round(bound_s, 2),
            "schedule_pods_per_s": round(args.pods / bound_s, 1),
            "all_running_s": round(running_s, 2),
            "max_pods_per_node": max(per_node.values()),
        },
    )


if __name__ == "__main__":
    main()
