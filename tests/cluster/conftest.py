"""Fixtures of the operator cluster tests: the CRDs applied to the session cluster, the operator
as a subprocess and the clients for TrainingRuns and Experiments (`operator_support`), and Kueue
on the session cluster with a queue per test (`kueue`, `kueue_queue`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from operator_support import Api, ExpApi, Operator, running_operator

from accordion_dev import kueue as kueue_objects
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
def operator(
    cluster: Cluster, trainingrun_crd: str, experiment_crd: str, tmp_path: Path
) -> Iterator[Operator]:
    """The operator on the API the chart installs: both CRDs (a test stream's cluster has only
    what its own tests applied so far)."""
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


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Cluster:
    """The session cluster with Kueue running (started on first use, ~5 s; it stays for the
    rest of the session: it manages only Jobs labelled with a queue name, and Workloads). A
    test module that needs a feature gate sets `cluster.config.kueue_feature_gates` and calls
    `cluster.start_kueue()`, which restarts Kueue if it runs with other gates."""
    cluster.start_kueue(log=print)
    return cluster


@pytest.fixture
def kueue_queue(kueue: Cluster, namespace: str) -> Iterator[Callable[..., str]]:
    """Makes Kueue queues for the test's namespace: `make(gpus, node_labels={"type": "kwok"})`
    creates a ResourceFlavor with those node labels, a ClusterQueue of `gpus` nvidia.com/gpu
    admitting only this namespace's workloads, and a LocalQueue in the namespace; returns the
    LocalQueue's name (the value of the `kueue.x-k8s.io/queue-name` label). Cluster-scoped
    objects get unique names and are deleted afterwards (Kueue's finalizers let them go once
    the namespace's workloads are gone)."""
    made: list[str] = []
    api = kueue_objects.API

    def make(gpus: int, node_labels: dict[str, str] | None = None) -> str:
        name = f"t-{secrets.token_hex(4)}"
        labels = {"type": "kwok"} if node_labels is None else node_labels
        with kueue.http() as http:
            for url, body in (
                (f"{api}/resourceflavors", kueue_objects.resource_flavor(name, labels)),
                (
                    f"{api}/clusterqueues",
                    kueue_objects.cluster_queue(name, name, gpus, [namespace]),
                ),
                (
                    f"{api}/namespaces/{namespace}/localqueues",
                    kueue_objects.local_queue(name, namespace, name),
                ),
            ):
                r = http.post(url, json=body)
                assert r.status_code == 201, r.text
        made.append(name)
        return name

    yield make
    with kueue.http() as http:
        for name in made:
            http.delete(f"{api}/clusterqueues/{name}")
            http.delete(f"{api}/resourceflavors/{name}")
