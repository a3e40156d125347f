"""Fixtures of the operator cluster tests: the CRDs applied to the session cluster, the operator
as a subprocess and the clients for TrainingRuns and Experiments (`operator_support`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from operator_support import Api, ExpApi, Operator, running_operator

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll

CRDS = Path(__file__).resolve().parents[2] / "crds"
CLASSES = "/apis/scheduling.k8s.io/v1/priorityclasses"


def _apply_crd(cluster: Cluster, name: str) -> str:
    """Apply crds/`name`.yaml and wait until the apiserver serves it."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS / f"{name}.yaml"))
    # (not `kubectl wait` right after apply: it errors while status.conditions is still unset)
    with cluster.http() as http:

        def established() -> bool:
            crd = http.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = (crd.json().get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        poll(established, 30, what=f"CRD {name} established")
    return name


@pytest.fixture(scope="session")
def trainingrun_crd(cluster: Cluster) -> str:
    return _apply_crd(cluster, "trainingruns.accordion.dev")


@pytest.fixture(scope="session")
def experiment_crd(cluster: Cluster) -> str:
    return _apply_crd(cluster, "experiments.accordion.dev")


@pytest.fixture
def operator(cluster: Cluster, trainingrun_crd: str, tmp_path: Path) -> Iterator[Operator]:
    with running_operator(cluster, tmp_path) as op:
        yield op


@pytest.fixture
def exp_operator(
    cluster: Cluster, trainingrun_crd: str, experiment_crd: str, tmp_path: Path
) -> Iterator[Operator]:
    with running_operator(cluster, tmp_path) as op:
        yield op


@pytest.fixture
def api(cluster: Cluster, trainingrun_crd: str, namespace: str) -> Iterator[Api]:
    with closing(Api(cluster, namespace)) as a:
        yield a


@pytest.fixture
def exp_api(cluster: Cluster, experiment_crd: str, namespace: str) -> Iterator[ExpApi]:
    with closing(ExpApi(cluster, namespace)) as a:
        yield a


@pytest.fixture
def priority_class(api: Api) -> Iterator[Callable[..., str]]:
    """Creates PriorityClasses (cluster-scoped: unique names), deleted after the test."""
    made: list[str] = []

    def make(value: int, *, cluster_wide: bool = False) -> str:
        name = f"t-{value}-{secrets.token_hex(3)}"
        annotations = {"accordion.dev/preempt-other-namespaces": "true"} if cluster_wide else {}
        body = {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name, "annotations": annotations},
            "value": value,
        }
        r = api.http.post(CLASSES, json=body)
        assert r.status_code == 201, r.text
        made.append(name)
        return name

    yield make
    for name in made:
        api.http.delete(f"{CLASSES}/{name}")
