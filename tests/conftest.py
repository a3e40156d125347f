"""Shared fixtures: one local cluster per test session, a fresh namespace per test.

The session cluster lives in its own temporary state directory on its own ports, so it never
touches a developer's cluster (`make cluster-up`), and it is torn down (processes and state) at
the end. Tests that need it carry the `cluster` marker (added automatically by fixture use).
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
from minio import Minio

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster")
    cfg = ClusterConfig(
        state_dir=state,
        base_port=free_port_block(),
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
