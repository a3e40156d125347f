"""Helpers of the operator cluster tests (their fixtures are in conftest.py): the operator as a
subprocess (`python -m accordion_operator`, cluster-wide) and small clients for TrainingRuns,
Experiments and their pods."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from accordion_dev import labels
from accordion_dev.cluster import Cluster
from accordion_dev.operator_proc import OperatorProcess
from accordion_operator.config import Config

TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"
EXP = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/experiments"


def run_pods(workers: int) -> int:
    """How many pods a run with `workers` Horovod hosts has: the workers and a launcher, which
    hosts worker 0 itself unless ACCORDION_LAUNCHER_HOSTS_WORKER is off in the environment the
    test operators inherit."""
    return workers + (0 if Config.from_env().launcher_hosts_worker else 1)


class Operator(OperatorProcess):
    """The operator process with the cluster tests' settings: short debounce, resync and
    cooldown, so that the tests' runs move in seconds."""

    def __init__(self, cluster: Cluster, log_dir: Path, env: dict[str, str]) -> None:
        super().__init__(
            cluster,
            log_dir,
            {
                "ACCORDION_DEBOUNCE_SECONDS": "0.1",
                "ACCORDION_RESYNC_SECONDS": "2",
                "ACCORDION_SCALE_COOLDOWN_SECONDS": "5",
                # The simulated runs name a fake endpoint (minio.local:9000): listing it would
                # only fail to resolve (such runs start unchecked) and cost a probe per
                # namespace. The preflight's own tests turn it on (test_storage_preflight.py).
                "ACCORDION_STORAGE_PREFLIGHT": "false",
                # Leader election stays on, but each process elects itself on a Lease of its
                # own: a process started after a SIGKILLed one would otherwise wait out the
                # dead one's Lease (10 s) at every restart. The HA test names one Lease for its
                # two replicas.
                "ACCORDION_LEADER_LEASE_NAME": f"accordion-test-{secrets.token_hex(4)}",
                **env,
            },
        )


class ResourceApi:
    """Synchronous helpers over the admin client for one kind of object in one namespace."""

    #: the collection's path, with `{ns}`
    collection = TR

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.cluster = cluster
        self.ns = ns
        self.http = cluster.http()

    def close(self) -> None:
        self.http.close()

    def create(self, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(self.collection.format(ns=self.ns), json=body)

    def get(self, name: str) -> dict[str, Any]:
        r = self.http.get(self.collection.format(ns=self.ns) + f"/{name}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == ctype:
                return dict(c)
        return {}

    def events(self, name: str) -> list[dict[str, Any]]:
        """The Events about object `name` in this namespace."""
        r = self.http.get(
            f"/api/v1/namespaces/{self.ns}/events",
            params={"fieldSelector": f"involvedObject.name={name}"},
        )
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items


class Api(ResourceApi):
    """TrainingRuns, their pods and Secrets."""

    def secret(self, name: str = "s3", **data: str) -> None:
        data = data or {"accessKey": "minio", "secretKey": "minio123"}
        r = self.http.post(
            f"/api/v1/namespaces/{self.ns}/secrets",
            json={"metadata": {"name": name}, "stringData": data},
        )
        assert r.status_code == 201, r.text

    def delete(self, name: str) -> None:
        r = self.http.delete(
            TR.format(ns=self.ns) + f"/{name}", params={"propagationPolicy": "Foreground"}
        )
        assert r.status_code in (200, 202), r.text

    def pods(
        self,
        selector: str = "app.kubernetes.io/managed-by=accordion-operator",
        ns: str | None = None,
    ) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{ns or self.ns}/pods" if ns != "" else "/api/v1/pods"
        r = self.http.get(path, params={"labelSelector": selector})
        r.raise_for_status()
        return [p for p in r.json()["items"] if not p["metadata"].get("deletionTimestamp")]

    def workers(self, run: str) -> list[dict[str, Any]]:
        """The run's Horovod hosts: its worker pods and a launcher that hosts worker 0 (the pods
        with a worker index), whichever way the operator runs the launcher."""
        return self.pods(labels.hosts(run))


class ExpApi(ResourceApi):
    """Experiments and their trial runs."""

    collection = EXP

    def runs(self, experiment: str) -> dict[str, dict[str, Any]]:
        r = self.http.get(
            TR.format(ns=self.ns),
            params={"labelSelector": f"accordion.dev/experiment={experiment}"},
        )
        r.raise_for_status()
        return {i["metadata"]["name"]: i for i in r.json()["items"]}

    def run_status(self, run: str) -> dict[str, Any]:
        r = self.http.get(TR.format(ns=self.ns) + f"/{run}")
        r.raise_for_status()
        status: dict[str, Any] = r.json().get("status") or {}
        return status

    def patch_run_status(self, run: str, status: dict[str, Any]) -> None:
        """Play the trainer/launcher: merge-patch the run's status subresource."""
        r = self.http.patch(
            TR.format(ns=self.ns) + f"/{run}/status",
            json={"status": status},
            headers={"content-type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text


@contextmanager
def running_operator(
    cluster: Cluster, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[Operator]:
    """The operator for a test (or a module of tests); the test fails if it died before the end."""
    op = Operator(cluster, log_dir, env or {})
    op.start()
    try:
        yield op
    finally:
        alive = op.alive()
        op.stop()
        assert alive, f"the operator died during the test:\n{op.tail()}"
