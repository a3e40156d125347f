"""Fixtures and helpers for the Experiment cluster tests: the CRDs, the operator subprocess
(shared with the TrainingRun tests) and a small client for experiments and their runs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from trainingrun_support import Operator, poll, trainingrun_crd

from accordion_dev.cluster import Cluster

__all__ = ["trainingrun_crd"]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "experiments.accordion.dev.yaml"
EXP = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/experiments"
TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"


@pytest.fixture(scope="session")
def experiment_crd(cluster: Cluster) -> str:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    name = "experiments.accordion.dev"
    # (not `kubectl wait` right after apply: it errors while status.conditions is still unset)
    with cluster.http() as http:

        def established() -> bool:
            crd = http.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = (crd.json().get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        poll(established, 30, what=f"CRD {name} established")
    return name


@pytest.fixture
def exp_operator(
    cluster: Cluster, trainingrun_crd: str, experiment_crd: str, tmp_path: Path
) -> Iterator[Operator]:
    op = Operator(cluster, tmp_path, {})
    op.start()
    try:
        yield op
    finally:
        alive = op.alive()
        op.stop()
        assert alive, f"the operator died during the test:\n{op.tail()}"


def merge(base: Any, patch: Any) -> Any:
    """JSON merge patch semantics (None deletes); lists are replaced."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class ExpApi:
    """Synchronous helpers over the admin client for one namespace."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.ns = ns
        self.http = cluster.http()

    def close(self) -> None:
        self.http.close()

    def create(self, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(EXP.format(ns=self.ns), json=body)

    def get(self, name: str) -> dict[str, Any]:
        r = self.http.get(EXP.format(ns=self.ns) + f"/{name}")
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

    def events(self, name: str) -> list[dict[str, Any]]:
        r = self.http.get(
            f"/api/v1/namespaces/{self.ns}/events",
            params={"fieldSelector": f"involvedObject.name={name}"},
        )
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
def exp_api(cluster: Cluster, experiment_crd: str, namespace: str) -> Iterator[ExpApi]:
    a = ExpApi(cluster, namespace)
    try:
        yield a
    finally:
        a.close()
