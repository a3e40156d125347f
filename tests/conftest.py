"""Shared fixtures: one local cluster per test session, a fresh namespace per test.

The session cluster lives in its own temporary state directory on its own ports, so it never
touches a developer's cluster (`make cluster-up`), and it is torn down (processes and state) at
the end. Tests that need it carry the `cluster` marker (added automatically by fixture use).

`make test` runs two pytest-xdist streams (`-n 2`; each stream has its own session cluster).
The suite is mostly waiting (a whole serial run kept the 2-core machine ~51 % busy), so a
second stream fills the gaps. Tests that run real pods (node agents, sshd, TensorFlow) stay in
one stream, one after the other as before; the trainer's tests (TensorFlow, local sshd, no pods)
in one other (`STREAM_GROUPS`), so that the two heaviest groups start at once on different
streams (xdist hands out its largest groups first) and pure and kube-only tests fill in. The
Kueue tests (marker `kueue`) run after the streams, alone: beside another stream, Kueue twice
left a run unadmitted for 90 s (not understood yet; alone they pass in ~45 s).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kr8s
import pytest
from hypothesis import settings
from minio import Minio
from xdist.scheduler import LoadScopeScheduling

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.polling import poll

CLUSTER_FIXTURES = {
    "cluster",
    "namespace",
    "kube",
    "minio_client",
    "bucket",
    "prom_query",
    "process_nodes",
}


#: the stream group of each test file (by path) that needs one; other tests go one by one
STREAM_GROUPS = {
    "tests/e2e/": "processes",  # real pods on process nodes: one after the other, as before
    "tests/images/": "processes",
    "tests/cluster/test_nodeagent.py": "processes",
    "tests/trainer/": "trainer",  # TensorFlow, local sshd, no pods
}

# Hypothesis' per-example deadline (200 ms) measures the machine, not the code, when two streams
# share two cores; the allocator's speed has its own benchmark (benchmarks/allocator.py).
settings.register_profile("accordion", deadline=None)
settings.load_profile("accordion")


def stream_group(nodeid: str) -> str | None:
    return next((g for prefix, g in STREAM_GROUPS.items() if nodeid.startswith(prefix)), None)


class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's scope scheduling with `STREAM_GROUPS` as the scopes (its `--dist loadgroup`
    renames node ids, which pytest 9 no longer lets a plugin do): each group runs in one stream,
    largest first; every other test is a scope of its own."""

    def _split_scope(self, nodeid: str) -> str:
        return stream_group(nodeid) or nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupScheduling:
    return GroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if CLUSTER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.cluster)
        # a test that starts process nodes elsewhere would run beside its group
        if "process_nodes" in fixtures and stream_group(item.nodeid) != "processes":
            raise pytest.UsageError(
                f"{item.nodeid} uses process_nodes: add its file to STREAM_GROUPS (processes)"
            )


def stream_index() -> int:
    """0, 1, ... for pytest-xdist's workers (gw0, gw1, ...); 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster")
    cfg = ClusterConfig(
        state_dir=state,
        # streams start their clusters at once: each looks for free ports in its own range
        base_port=free_port_block(first=26400 + 1000 * stream_index()),
        kwok_nodes=int(os.environ.get("ACCORDION_TEST_KWOK_NODES", "4")),
    )
    c = Cluster(cfg)
    c.up(log=lambda line: print(line))
    try:
        yield c
        # Every test namespace must be gone: nothing left behind by any test.
        with c.http() as http:
            poll(
                lambda: (
                    not [
                        n
                        for n in http.get("/api/v1/namespaces").json()["items"]
                        if n["metadata"]["name"].startswith("t-")
                    ]
                ),
                180,
                "test namespaces to be deleted",
            )
    finally:
        c.down()


@pytest.fixture(scope="session")
def process_nodes(cluster: Cluster) -> list[str]:
    """Three process nodes (one simulated GPU each) where pods really run."""
    want = int(os.environ.get("ACCORDION_TEST_PROCESS_NODES", "3"))
    have = cluster.process_node_names()
    if len(have) < want:
        cluster.add_process_nodes(want - len(have))
    return cluster.process_node_names()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> kr8s.Api:
    return kr8s.api(kubeconfig=str(cluster.kubeconfig))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; deleted afterwards, and the test fails if anything is left in it."""
    stem = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40]
    name = f"t-{stem.strip('-')}-{secrets.token_hex(3)}"
    with cluster.http() as http:
        r = http.post("/api/v1/namespaces", json={"metadata": {"name": name}})
        assert r.status_code == 201, r.text
        poll(
            lambda: (
                http.get(f"/api/v1/namespaces/{name}/serviceaccounts/default").status_code == 200
            ),
            30,
            f"default service account in {name}",
        )
    yield name
    # The test only waits for its pods to be gone (deleted at once, see delete_namespace), the
    # session end checks that every namespace went.
    cluster.delete_namespace(name)
    with cluster.http() as http:
        poll(
            lambda: not http.get(f"/api/v1/namespaces/{name}/pods").json().get("items"),
            120,
            f"pods of namespace {name} to be deleted",
        )


@pytest.fixture(scope="session")
def minio_client(cluster: Cluster) -> Minio:
    m = cluster.minio
    return Minio(m.endpoint, access_key=m.access_key, secret_key=m.secret_key, secure=False)


@pytest.fixture
def bucket(minio_client: Minio) -> Iterator[str]:
    """An empty bucket, removed with its objects afterwards."""
    name = f"test-{secrets.token_hex(4)}"
    minio_client.make_bucket(name)
    yield name
    for obj in minio_client.list_objects(name, recursive=True):
        minio_client.remove_object(name, obj.object_name)
    minio_client.remove_bucket(name)


@pytest.fixture(scope="session")
def prom_query(cluster: Cluster) -> Callable[[str], list[dict[str, Any]]]:
    """Instant PromQL query against the cluster's Prometheus; returns the result vector."""

    def query(expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    return query


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
