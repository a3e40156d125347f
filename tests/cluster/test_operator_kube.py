"""The operator's apiserver client (`accordion_operator.core.kube.Kube`) against the real local
apiserver: credentials from the kubeconfig, paginated LISTs from one snapshot, the watch feeding
the cache, and apiserver errors counted in the operator's metrics (404/409 are answers the
controller acts on, not errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from accordion_dev.cluster import Cluster
from accordion_operator.config import Config
from accordion_operator.core.cache import Watch, stream_count, watch_all
from accordion_operator.core.kube import Kube
from accordion_operator.core.objects import LABEL_MANAGED_BY, MANAGED_BY
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.trainingrun.builders import LABEL_RUN
from accordion_operator.trainingrun.cache import ClusterCache

pytestmark = pytest.mark.cluster


def pod(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            # labelled as the operator's own pods of run "r": the cache indexes them by run
            "labels": {"probe": "kube", LABEL_RUN: "r", LABEL_MANAGED_BY: MANAGED_BY},
        },
        # no node matches: the pods stay Pending and cost nothing
        "spec": {
            "nodeSelector": {"accordion.dev/none": "x"},
            "containers": [{"name": "c", "image": "x", "command": ["true"]}],
        },
    }


async def eventually(cache: ClusterCache, pred: Callable[[], bool]) -> None:
    """Wait (10 s at most) until `pred` holds, re-checking whenever the watch changes the cache."""
    async with asyncio.timeout(10):
        while not pred():
            cache.dirty.clear()
            if not pred():
                await cache.dirty.wait()


@pytest.fixture
def kubeconfig(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))


@pytest.mark.usefixtures("kubeconfig")
async def test_writes_errors_and_paginated_list(namespace: str) -> None:
    metrics = OperatorMetrics()
    kube = await Kube.connect(Config(namespaces=(namespace,)), metrics)
    for i in range(5):
        code, data = await kube.create(pod(namespace, f"p{i}"))
        assert code == 201, data
    code, _ = await kube.create(pod(namespace, "p0"))
    assert code == 409  # the controller's "already there under its deterministic name"
    bad = pod(namespace, "bad")
    bad["spec"]["containers"] = []
    code, data = await kube.create(bad)
    assert code == 422
    assert "containers" in data["message"]
    code, _ = await kube.delete_pod(namespace, "no-such-pod")
    assert code == 404

    text = generate_latest(metrics.registry).decode()
    errors = [x for x in text.splitlines() if x.startswith("accordion_apiserver_request_errors_t")]
    assert errors == [
        'accordion_apiserver_request_errors_total{code="422",resource="pods",verb="post"} 1.0'
    ]

    pages = [p async for p in kube.list_pages("v1", "pods", namespace, "probe=kube", limit=2)]
    assert [len(items) for items, _ in pages] == [2, 2, 1]
    assert len({rv for _, rv in pages}) == 1  # one snapshot, one resourceVersion to watch from
    listed = sorted(i["metadata"]["name"] for items, _ in pages for i in items)
    assert listed == [f"p{i}" for i in range(5)]
    await kube.close()


@pytest.mark.usefixtures("kubeconfig")
async def test_watch_keeps_the_cache_current(namespace: str) -> None:
    cfg = Config(namespaces=(namespace,))
    pods = [Watch("pod", "v1", "pods")]
    kube = await Kube.connect(cfg, streams=stream_count(cfg, pods))
    cache = ClusterCache(cfg)
    stop = asyncio.Event()
    await kube.create(pod(namespace, "before"))
    task = asyncio.create_task(watch_all(kube, cache, pods, stop))
    try:
        await eventually(cache, lambda: ("pod", namespace) in cache.synced)
        assert names(cache, namespace) == ["before"]  # from the LIST
        code, _ = await kube.create(pod(namespace, "after"))
        assert code == 201
        await eventually(cache, lambda: names(cache, namespace) == ["after", "before"])  # the WATCH
        await kube.delete_pod(namespace, "before")
        await eventually(cache, lambda: names(cache, namespace) == ["after"])
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()


def names(cache: ClusterCache, namespace: str) -> list[str]:
    return sorted(p.name for p in cache.pods_of(namespace, "r"))


@pytest.mark.usefixtures("kubeconfig")
async def test_the_same_news_twice_is_one_event_with_count_two(
    cluster: Cluster, namespace: str
) -> None:
    """A decision's Events go out before the status write that marks them said; a process killed
    between the two says them again after its restart. That second post must not be a second
    Event, and a true repeat shows as a count, as `kubectl describe` reads it."""
    kube = await Kube.connect(Config(namespaces=(namespace,)), OperatorMetrics())
    ref = {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": namespace, "uid": "u1"}
    await kube.event(ref, "Warning", "Preempted", "room for a higher priority")
    await kube.event(ref, "Warning", "Preempted", "room for a higher priority")
    await kube.event(ref, "Warning", "Preempted", "another message")
    await kube.event({**ref, "uid": "u2"}, "Warning", "Preempted", "room for a higher priority")
    await kube.close()
    http = cluster.http()
    try:
        items = http.get(f"/api/v1/namespaces/{namespace}/events").json()["items"]
    finally:
        http.close()
    seen = sorted((e["involvedObject"]["uid"], e["message"], e["count"]) for e in items)
    assert seen == [
        ("u1", "another message", 1),
        ("u1", "room for a higher priority", 2),
        ("u2", "room for a higher priority", 1),
    ]
