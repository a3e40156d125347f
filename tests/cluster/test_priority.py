"""Priority that cluster admins control (issue 16, item 4), on kwok GPU nodes with the operator
running: a run's priority is its PriorityClass's value; a class preempts runs of other
namespaces only when it carries `accordion.dev/preempt-other-namespaces: "true"`; a namespace's
ResourceQuota scoped to a class keeps that namespace from using it, before any GPU is taken."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing

import pytest
from operator_support import Api, Operator
from tenancy_support import bystander_progresses, tenant_namespace

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

pytestmark = pytest.mark.cluster
KWOK = {"type": "kwok"}


@pytest.fixture
def other(cluster: Cluster, api: Api) -> Iterator[Api]:
    """A second tenant's namespace with the same credentials Secret name (deleted afterwards
    without waiting: the session's end checks that it went)."""
    with tenant_namespace(cluster, "prio-b") as name, closing(Api(cluster, name)) as b:
        yield b


@pytest.fixture
def gpus(api: Api) -> int:
    r = api.http.get("/api/v1/nodes", params={"labelSelector": "type=kwok"})
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in r.json()["items"])
    assert total >= 8, total
    assert total % 8 == 0, total
    return total


def admitted(a: Api, run: str) -> tuple[str, str]:
    cond = a.condition(run, "Admitted")
    return cond.get("status", ""), cond.get("reason", "")


def delete_and_wait(a: Api, *runs: str) -> None:
    """Delete runs and wait until their pods are gone (terminating ones too): the bystander
    after a case needs a free GPU, and garbage collection takes its time."""
    for run in runs:
        a.delete(run)

    def gone() -> bool:
        r = a.http.get(f"/api/v1/namespaces/{a.ns}/pods")
        labels = [p["metadata"].get("labels", {}) for p in r.json()["items"]]
        return not [lb for lb in labels if lb.get("accordion.dev/run") in runs]

    poll(gone, 60, what=f"pods of {runs} gone")


def wait_admitted(a: Api, run: str, expected: tuple[str, str], timeout: float = 30) -> None:
    """Until the run's Admitted condition has `expected` (status, reason); says what it had."""
    seen: list[tuple[str, str]] = []

    def check() -> bool:
        seen.append(admitted(a, run))
        return seen[-1] == expected

    try:
        poll(check, timeout, what=f"{run} Admitted {expected}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; it had {seen[-1]}, status {a.status(run)}") from None


def test_a_team_class_preempts_only_its_own_namespace(
    api: Api, other: Api, operator: Operator, priority_class: Callable[..., str], gpus: int
) -> None:
    team = priority_class(100)
    api.secret()
    # team A's run holds every GPU
    assert api.create(run_body("low", nodeSelector=KWOK, lo=gpus, hi=gpus)).status_code == 201
    poll(lambda: len(api.workers("low")) == gpus, 30, what="low holds every GPU")
    # team B's run of a higher class without the annotation waits: it may not preempt team A
    body = run_body("b-high", nodeSelector=KWOK, lo=gpus // 2, hi=gpus // 2, priority_class=team)
    assert other.create(body).status_code == 201
    wait_admitted(other, "b-high", ("False", "WaitingForGPUs"))
    assert len(api.workers("low")) == gpus
    assert admitted(api, "low") == ("True", "MinimumWorkersFit")
    # the pods carry the class (quota scopes and the kube-scheduler see it)
    other.delete("b-high")
    # team A's own run of that class does preempt team A's low run
    body = run_body("a-high", nodeSelector=KWOK, lo=gpus // 2, hi=gpus // 2, priority_class=team)
    assert api.create(body).status_code == 201
    poll(lambda: len(api.workers("a-high")) == gpus // 2, 30, what="a-high admitted")
    wait_admitted(api, "low", ("False", "PreemptedByHigherPriority"))
    assert {p["spec"].get("priorityClassName") for p in api.workers("a-high")} == {team}
    delete_and_wait(api, "a-high", "low")
    bystander_progresses(other.cluster)


def test_a_cluster_wide_class_preempts_other_namespaces(
    api: Api, other: Api, operator: Operator, priority_class: Callable[..., str], gpus: int
) -> None:
    prod = priority_class(1000, cluster_wide=True)
    api.secret()
    assert api.create(run_body("low", nodeSelector=KWOK, lo=gpus, hi=gpus)).status_code == 201
    poll(lambda: len(api.workers("low")) == gpus, 30, what="low holds every GPU")
    body = run_body("prod", nodeSelector=KWOK, lo=gpus // 2, hi=gpus // 2, priority_class=prod)
    assert other.create(body).status_code == 201
    poll(lambda: len(other.workers("prod")) == gpus // 2, 30, what="prod admitted")
    wait_admitted(api, "low", ("False", "PreemptedByHigherPriority"))


def test_a_class_the_namespace_may_not_use_takes_nothing_from_anyone(
    api: Api, other: Api, operator: Operator, priority_class: Callable[..., str], gpus: int
) -> None:
    """The cluster admin forbids class `prod` in namespace B with a ResourceQuota scoped to it
    (`pods: 0`): B's run of that class is refused before it takes a GPU, with the quota named,
    and A's run keeps all its workers."""
    prod = priority_class(1000, cluster_wide=True)
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-prod"},
        "spec": {
            "hard": {"pods": "0"},
            "scopeSelector": {
                "matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": [prod]}
                ]
            },
        },
    }
    r = api.http.post(f"/api/v1/namespaces/{other.ns}/resourcequotas", json=quota)
    assert r.status_code == 201, r.text
    api.secret()
    assert api.create(run_body("low", nodeSelector=KWOK, lo=gpus, hi=gpus)).status_code == 201
    poll(lambda: len(api.workers("low")) == gpus, 30, what="low holds every GPU")
    body = run_body("sneaky", nodeSelector=KWOK, lo=gpus // 2, hi=gpus // 2, priority_class=prod)
    assert other.create(body).status_code == 201
    poll(lambda: admitted(other, "sneaky")[1] == "QuotaExceeded", 20, what="sneaky refused")
    message = other.condition("sneaky", "Admitted")["message"]
    assert f"{other.ns}/no-prod" in message
    assert "pods: 0" in message
    assert other.pods("accordion.dev/run=sneaky") == []
    assert len(api.workers("low")) == gpus
    assert admitted(api, "low") == ("True", "MinimumWorkersFit")
    assert any(e["reason"] == "QuotaExceeded" for e in other.events("sneaky"))
    delete_and_wait(api, "low")
    bystander_progresses(other.cluster)
