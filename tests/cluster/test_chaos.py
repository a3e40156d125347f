"""Chaos (issue 16's acceptance): 100 one-worker runs on kwok GPU nodes while the operator is
SIGKILLed ten times at random moments; afterwards every run is in the state the allocator implies
(as many admitted as there are GPUs, each with one launcher and one worker; the others queued
with no pod), no pod is duplicated or orphaned and every run has conditions.

The runs and the kills are those of `benchmarks/operator_chaos.py` (`storm`, `converge`,
`observe`), on two kwok nodes of their own (16 GPUs, label `type=<unique>`), so that the session
cluster's other GPUs and runs do not enter the count and 16 runs, not 64, make the pods to create:
the test stays short. The benchmark runs the same on 64 GPUs and records its figures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_pools import kwok_gpu_pool
from operator_support import Operator
from tenancy_support import tenant_namespace

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from benchmarks.operator_chaos import converge, storm

pytestmark = pytest.mark.cluster

RUNS = 100
KILLS = 10
NODES = 2
GPUS_PER_NODE = 8


@pytest.fixture
def chaos_nodes(cluster: Cluster) -> Iterator[dict[str, str]]:
    with kwok_gpu_pool(cluster, "chaos", NODES, GPUS_PER_NODE) as selector:
        yield selector


def test_operator_converges_after_ten_sigkills(
    cluster: Cluster, trainingrun_crd: str, chaos_nodes: dict[str, str], tmp_path: Path
) -> None:
    op = Operator(cluster, tmp_path, {})
    op.start()
    t0 = time.monotonic()
    with (
        tenant_namespace(cluster, "chaos-a") as a,
        tenant_namespace(cluster, "chaos-b") as b,
        tenant_namespace(cluster, "chaos-c") as c,
        tenant_namespace(cluster, "chaos-d") as d,
    ):
        namespaces = [a, b, c, d]
        kills: list[float] = []

        def restart() -> None:
            op.kill()
            kills.append(round(time.monotonic() - t0, 1))
            op.start()

        try:
            storm(
                cluster,
                namespaces,
                runs=RUNS,
                kills=KILLS,
                rng=random.Random(1),  # noqa: S311 - kill moments, not secrets
                restart=restart,
                node_selector=chaos_nodes,
                gap=(0.3, 2.0),
            )
            restarted = time.monotonic()
            seen = converge(cluster, NODES * GPUS_PER_NODE, 60, namespaces, log=lambda _: None)
            took = time.monotonic() - restarted
            print(
                f"[chaos] {RUNS} runs, kills at {kills} s; converged {took:.1f} s after the last "
                f"restart, {time.monotonic() - t0:.1f} s in all: {seen}"
            )
            assert not seen["problems"], (seen, op.tail())
            assert seen["runs"] == RUNS - RUNS // 6
            assert seen["admitted"] == NODES * GPUS_PER_NODE
            assert op.alive(), op.tail()
        finally:
            op.stop()
    # the pods go with their namespaces before the nodes they sit on do
    with cluster.http() as http:
        poll(
            lambda: (
                not [
                    p
                    for p in http.get("/api/v1/pods").json()["items"]
                    if p["metadata"]["namespace"] in namespaces
                ]
            ),
            120,
            "the chaos runs' pods to be deleted",
        )
