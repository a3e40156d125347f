"""Bring about, for real, the conditions of the chart's alerts that a healthy demo run never
meets, on the demo's cluster after its run (tests/e2e/test_demo.py):

- a run that stays Pending: its credentials Secret does not exist (`AccordionRunPendingTooLong`
  is then pending in Prometheus; its `for: 30m` is not waited out);
- a run whose worker pods keep failing: its data endpoint is a closed port, so every worker
  fails its data stage-in (DataUnreachable, a reason the operator retries: it replaces the
  worker) within seconds (`AccordionRunFailingRepeatedly` fires once three have failed);
- API requests the apiserver refuses: a ResourceQuota of 1 milli-CPU in the namespace of a run,
  so the operator's pod creations are answered 403 (`accordion_apiserver_request_errors_total`;
  not `pods: 0`, which the operator reads and refuses itself before creating anything,
  `QuotaExceeded`);
- the operator stops (`AccordionOperatorDown`, pending for its `for: 5m`).

The runs need no GPU (`gpusPerWorker: 0`), so they never compete with the demo's.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx

from accordion_dev.cluster import GPU_TOLERATION, Cluster
from accordion_dev.demo import create_credentials_secret

GROUP = "/apis/accordion.dev/v1alpha1"
PENDING_NS, FAILING_NS, QUOTA_NS = "obs-pending", "obs-failing", "obs-quota"


#: where nothing listens: connections are refused at once
CLOSED_ENDPOINT = "127.0.0.1:1"


def training_run(
    cluster: Cluster, name: str, secret: str, data_endpoint: str | None = None, workers: int = 1
) -> dict[str, Any]:
    store = {"endpoint": cluster.minio.endpoint, "credentialsSecret": {"name": secret}}
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "model": {"builtin": "mnist-cnn"},
            "epochs": 1,
            "data": {
                **store,
                "endpoint": data_endpoint or cluster.minio.endpoint,
                "bucket": "mnist-data",
                "prefix": "mnist/",
            },
            "results": {**store, "bucket": "mnist-results", "prefix": "alerts/"},
            "workers": {
                "min": workers,
                "max": workers,
                "gpusPerWorker": 0,
                "cpu": "100m",
                "memory": "1Gi",
            },
            "tolerations": [GPU_TOLERATION],
        },
    }


def _create(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    r = http.post(path, json=body)
    assert r.status_code in (201, 409), r.text


def create(cluster: Cluster) -> None:
    """The three runs (and the quota), each in a namespace of its own."""
    for ns in (FAILING_NS, QUOTA_NS):
        create_credentials_secret(cluster, ns)
    with cluster.http() as http:
        _create(http, "/api/v1/namespaces", {"metadata": {"name": PENDING_NS}})
        _create(
            http,
            f"/api/v1/namespaces/{QUOTA_NS}/resourcequotas",
            {"metadata": {"name": "no-pods"}, "spec": {"hard": {"requests.cpu": "1m"}}},
        )
        runs = {
            PENDING_NS: training_run(cluster, "waits-for-secret", "does-not-exist"),
            # two workers: worker 1 is a pod of its own, replaced at once when it fails (worker
            # 0, in the launcher's pod, restarts with the launcher's back-off: 10 s, 20 s, ...)
            FAILING_NS: training_run(
                cluster,
                "unreachable-data",
                "minio-credentials",
                data_endpoint=CLOSED_ENDPOINT,
                workers=2,
            ),
            QUOTA_NS: training_run(cluster, "over-quota", "minio-credentials"),
        }
        for ns, body in runs.items():
            _create(http, f"{GROUP}/namespaces/{ns}/trainingruns", body)


def delete_failing(cluster: Cluster) -> None:
    """Stop the failing workers and the refused creations (they cost CPU); what Prometheus
    scraped of them stays."""
    with cluster.http() as http:
        for ns, name in ((FAILING_NS, "unreachable-data"), (QUOTA_NS, "over-quota")):
            http.delete(f"{GROUP}/namespaces/{ns}/trainingruns/{name}")


def stop_operator(cluster: Cluster) -> None:
    """SIGTERM the demo's operator process (its process group)."""
    (proc,) = [p for p in cluster.procs.load() if p.name == "operator"]
    os.killpg(proc.pid, signal.SIGTERM)


def wait_for(
    query: Callable[[str], list[dict[str, Any]]], exprs: list[str], timeout: float
) -> dict[str, bool]:
    """Poll instant queries until each returned something; which did, when time is up."""
    seen = dict.fromkeys(exprs, False)
    deadline = time.monotonic() + timeout
    while not all(seen.values()) and time.monotonic() < deadline:
        for expr in [e for e, ok in seen.items() if not ok]:
            seen[expr] = bool(query(expr))
        time.sleep(1)
    return seen
