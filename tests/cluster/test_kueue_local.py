"""Kueue in the local cluster (`cluster up --kueue`, `Cluster.start_kueue`): the real Kueue
manager, its webhooks called by the apiserver over TLS on 127.0.0.1, admits a labelled batch/v1
Job through a ClusterQueue's nvidia.com/gpu quota onto a kwok GPU node, and a second Job that
does not fit waits, suspended with its Workload not admitted, until the first finishes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from accordion_dev import kueue as kq
from accordion_dev.cluster import KWOK_KEEP_RUNNING, Cluster
from accordion_dev.polling import poll

pytestmark = pytest.mark.kueue  # run alone (tests/conftest.py)

JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
MERGE = {"content-type": "application/merge-patch+json"}


def _workload(http: httpx.Client, ns: str, job: str) -> dict[str, Any] | None:
    items = http.get(f"{kq.API}/namespaces/{ns}/workloads").json().get("items") or []
    return next(
        (w for w in items if any(o["name"] == job for o in w["metadata"]["ownerReferences"])),
        None,
    )


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), {})


def _running_pod(http: httpx.Client, ns: str, job: str) -> dict[str, Any] | None:
    pods = http.get(
        f"/api/v1/namespaces/{ns}/pods", params={"labelSelector": f"job-name={job}"}
    ).json()["items"]
    return next((p for p in pods if p["status"].get("phase") == "Running"), None)


def test_kueue_admits_a_job_and_queues_one_that_does_not_fit(
    kueue: Cluster, namespace: str, kueue_queue: Callable[..., str]
) -> None:
    queue = kueue_queue(1)  # one GPU of quota, on kwok nodes
    jobs = JOBS.format(ns=namespace)
    with kueue.http() as http:
        r = http.post(jobs, json=kq.gpu_job("first", queue))
        assert r.status_code == 201, r.text
        # Kueue's mutating webhook suspended it at creation (the apiserver called it over TLS)
        assert r.json()["spec"]["suspend"] is True

        pod = poll(lambda: _running_pod(http, namespace, "first"), 15, "first Job's pod Running")
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        # the flavor's node labels, added by Kueue at admission
        assert pod["spec"]["nodeSelector"] == {"type": "kwok"}
        assert _condition(_workload(http, namespace, "first"), "Admitted")["status"] == "True"

        r = http.post(jobs, json=kq.gpu_job("second", queue))
        assert r.status_code == 201, r.text

        def pending() -> dict[str, Any]:
            reserved = _condition(_workload(http, namespace, "second"), "QuotaReserved")
            return reserved if reserved.get("status") == "False" else {}

        reserved = poll(pending, 10, "second Job's Workload pending")
        assert "insufficient" in reserved["message"], reserved
        assert _condition(_workload(http, namespace, "second"), "Admitted").get("status") != "True"
        assert http.get(f"{jobs}/second").json()["spec"]["suspend"] is True
        assert _running_pod(http, namespace, "second") is None

        # the first Job's pod ends (kwok completes it once it lacks the keep-running label), the
        # Job finishes and its quota is released: the second is admitted and its pod runs
        r = http.patch(
            f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}",
            json={"metadata": {"labels": {KWOK_KEEP_RUNNING: None}}},
            headers=MERGE,
        )
        assert r.status_code == 200, r.text
        poll(lambda: _running_pod(http, namespace, "second"), 20, "second Job's pod Running")
        assert _condition(_workload(http, namespace, "first"), "Finished")["status"] == "True"
        assert _condition(_workload(http, namespace, "second"), "Admitted")["status"] == "True"
        assert http.get(f"{jobs}/second").json()["spec"]["suspend"] is False
