"""Fixtures and helpers for the Experiment cluster tests: the CRDs, the operator subprocess
(shared with the TrainingRun tests) and a small client for experiments and their runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainingrun_support import Operator, ResourceApi, trainingrun_crd

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll

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


@pytest.fixture
def exp_api(cluster: Cluster, experiment_crd: str, namespace: str) -> Iterator[ExpApi]:
    a = ExpApi(cluster, namespace)
    try:
        yield a
    finally:
        a.close()
