"""The local cluster itself: the real control plane, kwok GPU nodes, MinIO and Prometheus."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from minio import Minio
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from accordion_dev.cluster import (
    GPU_TOLERATION,
    KWOK_TOLERATION,
    Cluster,
    ClusterError,
    add_kwok_nodes,
    wait_nodes_ready,
)
from accordion_dev.polling import poll


def test_kubectl_reports_the_pinned_release_and_gpu_nodes(cluster: Cluster) -> None:
    assert "Server Version: v1.36.3" in cluster.kubectl("version")
    nodes = cluster.kubectl(
        "get",
        "nodes",
        "-l",
        "type=kwok",
        "-o",
        r"jsonpath={range .items[*]}{.status.allocatable.nvidia\.com/gpu}{' '}{end}",
    )
    assert nodes.split() == ["8"] * 4


def test_second_up_is_refused_while_running(cluster: Cluster) -> None:
    with pytest.raises(ClusterError, match="already running"):
        Cluster(cluster.config).up(log=lambda _: None)


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.accordion.dev"},
    "spec": {
        "group": "test.accordion.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.min <= self.max",
                                        "message": "min must be <= max",
                                    }
                                ],
                                "properties": {
                                    "min": {"type": "integer"},
                                    "max": {"type": "integer"},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_with_cel_validation_serves_custom_objects(cluster: Cluster, namespace: str) -> None:
    with cluster.http() as http:
        r = http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=CRD)
        assert r.status_code in (201, 409), r.text
        base = f"/apis/test.accordion.dev/v1/namespaces/{namespace}/widgets"
        poll(lambda: http.get(base).status_code == 200)
        ok = {
            "apiVersion": "test.accordion.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "ok"},
            "spec": {"min": 1, "max": 3},
        }
        assert http.post(base, json=ok).status_code == 201
        assert http.get(f"{base}/ok").json()["spec"] == {"min": 1, "max": 3}
        bad = {**ok, "metadata": {"name": "bad"}, "spec": {"min": 5, "max": 3}}
        r = http.post(base, json=bad)
        assert r.status_code == 422
        assert "min must be <= max" in r.json()["message"]


def _gpu_pod(name: str, pool: str, tolerate_gpu: bool = True) -> dict[str, Any]:
    tolerations = [KWOK_TOLERATION] + ([GPU_TOLERATION] if tolerate_gpu else [])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"test-pool": pool},
            "tolerations": tolerations,
            "containers": [
                {
                    "name": "main",
                    "image": "trainer",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


def test_scheduler_respects_gpu_capacity_and_taints(cluster: Cluster, namespace: str) -> None:
    pool = namespace[-6:]
    names = add_kwok_nodes(cluster, 2, gpus=4, prefix=f"pool-{pool}")
    try:
        with cluster.http() as http:
            for name in names:
                r = http.patch(
                    f"/api/v1/nodes/{name}",
                    json={"metadata": {"labels": {"test-pool": pool}}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                assert r.status_code == 200, r.text
            wait_nodes_ready(cluster, 2, selector=f"test-pool={pool}")
            base = f"/api/v1/namespaces/{namespace}/pods"
            for i in range(9):  # 8 GPUs in the pool: one pod too many
                assert http.post(base, json=_gpu_pod(f"w{i}", pool)).status_code == 201
            assert (
                http.post(
                    base, json=_gpu_pod("no-toleration", pool, tolerate_gpu=False)
                ).status_code
                == 201
            )

            def placed() -> dict[str, str] | None:
                pods = http.get(base).json()["items"]
                bound = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods}
                pending = [
                    p
                    for p in pods
                    if any(
                        c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                        for c in p["status"].get("conditions", [])
                    )
                ]
                return (
                    bound
                    if sum(1 for n in bound.values() if n) == 8 and len(pending) == 2
                    else None
                )

            bound = poll(placed)
            per_node = {n: list(bound.values()).count(n) for n in names}
            assert per_node == {names[0]: 4, names[1]: 4}
            assert bound["no-toleration"] == ""
            msgs = {
                p["metadata"]["name"]: p["status"]["conditions"][0]["message"]
                for p in http.get(base).json()["items"]
                if not p["spec"].get("nodeName")
            }
            # it tolerates only the kwok taint: what stops it is nvidia.com/gpu=present
            assert "untolerated taint" in msgs["no-toleration"]
            unplaced_gpu = [m for n, m in msgs.items() if n != "no-toleration"]
            assert len(unplaced_gpu) == 1
            assert "Insufficient nvidia.com/gpu" in unplaced_gpu[0]
            # kwok plays the kubelet: bound pods become Running
            poll(
                lambda: (
                    sum(
                        p["status"].get("phase") == "Running"
                        for p in http.get(base).json()["items"]
                    )
                    == 8
                )
            )
    finally:
        with cluster.http() as http:
            # Pods first: pods bound to a vanished node wait ~40 s for the pod GC.
            http.delete(f"/api/v1/namespaces/{namespace}/pods")
            poll(lambda: not http.get(f"/api/v1/namespaces/{namespace}/pods").json()["items"])
            for name in names:
                http.delete(f"/api/v1/nodes/{name}")


def test_garbage_collector_deletes_owned_children(cluster: Cluster, namespace: str) -> None:
    with cluster.http() as http:
        base = f"/api/v1/namespaces/{namespace}/configmaps"
        owner = http.post(base, json={"metadata": {"name": "owner"}}).json()
        ref = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner["metadata"]["uid"],
            "blockOwnerDeletion": True,
        }
        for i in range(3):
            r = http.post(base, json={"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}})
            assert r.status_code == 201
        assert (
            http.delete(f"{base}/owner", params={"propagationPolicy": "Background"}).status_code
            == 200
        )
        poll(
            lambda: (
                not [
                    c
                    for c in http.get(base).json()["items"]
                    if c["metadata"]["name"].startswith("child-")
                ]
            )
        )


def test_minio_bucket_round_trip(minio_client: Minio, bucket: str) -> None:
    payload = secrets.token_bytes(300_000)
    minio_client.put_object(bucket, "data/blob.bin", io.BytesIO(payload), len(payload))
    got = minio_client.get_object(bucket, "data/blob.bin")
    try:
        assert got.read() == payload
    finally:
        got.close()
        got.release_conn()
    listed = [o.object_name for o in minio_client.list_objects(bucket, prefix="data/")]
    assert listed == ["data/blob.bin"]


def test_minio_rejects_wrong_credentials(cluster: Cluster) -> None:
    wrong = Minio(
        cluster.minio.endpoint, access_key="nobody", secret_key="wrong-secret", secure=False
    )
    with pytest.raises(Exception, match=r"InvalidAccessKeyId|AccessDenied|SignatureDoesNotMatch"):
        wrong.list_buckets()


def test_prometheus_scrapes_a_target_it_is_told_about(
    cluster: Cluster, prom_query: Callable[[str], list[dict[str, Any]]]
) -> None:
    registry = CollectorRegistry()
    marker = secrets.randbelow(10_000) + 1
    Gauge("accordion_test_marker", "set by the test", registry=registry).set(marker)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_address[1]
    target = f"test-{marker}"
    try:
        cluster.add_scrape_target(target, f"127.0.0.1:{port}", {"test": target})
        result = poll(lambda: prom_query(f'accordion_test_marker{{test="{target}"}}'), timeout=30)
        assert float(result[0]["value"][1]) == marker
        up = prom_query(f'up{{test="{target}"}}')
        assert up
        assert up[0]["value"][1] == "1"
    finally:
        cluster.remove_scrape_target(target)
        server.shutdown()
        thread.join(5)


def test_pod_discovery_follows_pods_with_a_metrics_port(cluster: Cluster, namespace: str) -> None:
    """`accordion_dev.pod_discovery` (kubernetes_sd's stand-in) lists Running pods that declare a
    `metrics` port as Prometheus targets, with the run/experiment labels, and drops them when
    they go; pods without such a port are never targets."""
    targets = cluster.prometheus_targets_dir / "pods.json"

    def pod(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "labels": {"accordion.dev/run": "r1", "accordion.dev/experiment": "e1"},
            },
            "spec": {
                "tolerations": [{"operator": "Exists"}],
                "nodeSelector": {"type": "kwok"},
                "containers": [{"name": "c", "image": "x", "ports": ports}],
            },
        }

    def mine() -> list[dict[str, Any]]:
        groups = json.loads(targets.read_text()) if targets.exists() else []
        return [g for g in groups if g["labels"]["namespace"] == namespace]

    with cluster.http() as http:
        for body in (
            pod("scraped", [{"name": "metrics", "containerPort": 9400}]),
            pod("plain", [{"name": "http", "containerPort": 80}]),
        ):
            r = http.post(f"/api/v1/namespaces/{namespace}/pods", json=body)
            assert r.status_code == 201, r.text
        (group,) = poll(mine, timeout=30)
        assert group["labels"] == {
            "namespace": namespace,
            "pod": "scraped",
            "container": "c",
            "run": "r1",
            "experiment": "e1",
        }
        assert group["targets"][0].endswith(":9400")
        http.delete(
            f"/api/v1/namespaces/{namespace}/pods/scraped", params={"gracePeriodSeconds": 0}
        )
        poll(lambda: mine() == [] or None, timeout=30)


def test_status_reports_a_crashed_component(tmp_path: Any) -> None:
    from accordion_dev.cluster import ClusterConfig

    c = Cluster(ClusterConfig(state_dir=tmp_path, base_port=1))
    sleeper = c.procs.start("kwok", ["sleep", "60"])
    rows = {name: state for name, state, _ in c.status()}
    assert rows["kwok"] in ("ok", "UNHEALTHY")  # alive; nothing listens on port 6
    subprocess.run(["kill", "-9", str(sleeper.pid)], check=True)
    poll(lambda: dict((n, s) for n, s, _ in c.status())["kwok"] == "DOWN", timeout=5)
    assert c.down() == ["kwok"]


def test_apiserver_rejects_anonymous_writes(cluster: Cluster) -> None:
    r = httpx.post(
        f"{cluster.server}/api/v1/namespaces",
        json={"metadata": {"name": "x"}},
        verify=False,  # noqa: S501 (anonymous on purpose: no CA, no client cert)
        timeout=5,
    )
    assert r.status_code == 403
