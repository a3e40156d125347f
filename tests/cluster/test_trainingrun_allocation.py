"""The operator on kwok GPU nodes (pods are scheduled, nothing runs): queueing, elastic growth,
priority, kubectl scale, printer columns, suspend, and a crash mid-way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from operator_support import Api, Operator
from prometheus_client.parser import text_string_to_metric_families

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

KWOK = {"type": "kwok"}  # only the simulated GPU nodes: process nodes may exist too


@pytest.fixture
def capacity(api: Api) -> int:
    r = api.http.get("/api/v1/nodes", params={"labelSelector": "type=kwok"})
    gpus = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in r.json()["items"])
    assert gpus >= 16, gpus
    assert gpus % 8 == 0, gpus
    return gpus


def create(api: Api, name: str, **kw: Any) -> None:
    r = api.create(run_body(name, nodeSelector=KWOK, **kw))
    assert r.status_code == 201, r.text


def converged(api: Api, name: str, workers: int) -> bool:
    st = api.status(name)
    return (
        st.get("desiredWorkers") == workers
        and st.get("currentWorkers") == workers
        and len(api.workers(name)) == workers
    )


def wait_workers(api: Api, expected: dict[str, int], timeout: float = 30) -> None:
    def check() -> bool | dict[str, Any]:
        got = {n: (api.status(n).get("desiredWorkers"), len(api.workers(n))) for n in expected}
        ok = all(converged(api, n, w) for n, w in expected.items())
        return ok or {"_": False, **got}  # the dict is only shown on timeout

    def ok() -> bool:
        return check() is True

    try:
        poll(ok, timeout, what=f"workers {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now: {check()}") from None


def test_queue_admit_and_grow(api: Api, operator: Operator, capacity: int) -> None:
    c = capacity
    api.secret()
    create(api, "a", lo=c // 4, hi=c // 2)
    create(api, "b", lo=c // 4, hi=c // 2)
    wait_workers(api, {"a": c // 2, "b": c // 2})
    create(api, "c", lo=c * 5 // 8, hi=c * 5 // 8)
    adm = poll(lambda: api.condition("c", "Admitted"), 15, what="c evaluated")
    assert (adm["status"], adm["reason"]) == ("False", "WaitingForGPUs")
    assert api.status("c")["phase"] == "Queued"
    assert api.workers("c") == []
    # one run goes away: the queued gang fits now, the other elastic run keeps the rest
    api.delete("a")
    wait_workers(api, {"c": c * 5 // 8, "b": c - c * 5 // 8}, timeout=30)
    assert api.condition("c", "Admitted")["status"] == "True"
    # and when c goes too, b grows back to its max within seconds
    api.delete("c")
    wait_workers(api, {"b": c // 2}, timeout=20)
    st = api.status("b")
    assert st["gpus"] == c // 2
    assert st["workerSummary"] == f"{c // 2}/{c // 2}"


def test_higher_priority_shrinks_lower_which_keeps_running(
    api: Api, operator: Operator, capacity: int, priority_class: Callable[..., str]
) -> None:
    c = capacity
    api.secret()
    create(api, "low", lo=c // 8, hi=c)
    wait_workers(api, {"low": c})
    create(api, "high", lo=c // 2, hi=c // 2, priority_class=priority_class(100))
    wait_workers(api, {"high": c // 2, "low": c // 2}, timeout=30)
    low = api.status("low")
    assert low["phase"] == "Running"
    assert api.condition("low", "Admitted")["status"] == "True"
    assert len(api.pods("accordion.dev/run=low,accordion.dev/role=launcher")) == 1


def test_kubectl_scale_and_columns(
    api: Api, operator: Operator, cluster: Cluster, capacity: int
) -> None:
    api.secret()
    create(api, "elastic", lo=1, hi=8)
    wait_workers(api, {"elastic": 8})
    cluster.kubectl("-n", api.ns, "scale", "tr", "elastic", "--replicas", "3")
    wait_workers(api, {"elastic": 3})
    out = cluster.kubectl("-n", api.ns, "get", "tr", "elastic")
    header, row = out.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "WORKERS", "GPUS", "EPOCH", "AGE"]
    assert row.split()[:4] == ["elastic", "Running", "3/3", "3"]
    refused = cluster.kubectl(
        "-n", api.ns, "scale", "tr", "elastic", "--replicas", "9", check=False
    )
    assert refused == ""  # kubectl prints the rejection on stderr
    assert api.get("elastic")["spec"]["workers"]["replicas"] == 3
    scale = api.http.get(
        f"/apis/accordion.dev/v1alpha1/namespaces/{api.ns}/trainingruns/elastic/scale"
    ).json()
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "accordion.dev/run=elastic,accordion.dev/worker-index"
    assert len(api.workers("elastic")) == 3  # the selector finds the run's three hosts
    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    mine = (("namespace", api.ns), ("run", "elastic"))
    assert samples[("accordion_run_workers_desired", mine)] == 3
    assert samples[("accordion_run_phase", (*mine[:1], ("phase", "Running"), *mine[1:]))] == 1


def test_suspend_frees_gpus_and_resume_restarts(api: Api, operator: Operator) -> None:
    api.secret()
    create(api, "pausable", lo=2, hi=2)
    wait_workers(api, {"pausable": 2})
    started = api.status("pausable")["startTime"]
    r = api.http.patch(
        f"/apis/accordion.dev/v1alpha1/namespaces/{api.ns}/trainingruns/pausable",
        json={"spec": {"suspend": True}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    poll(
        lambda: api.status("pausable").get("phase") == "Suspended" and api.pods() == [],
        20,
        what="suspended with no pods",
    )
    assert api.condition("pausable", "Suspended")["status"] == "True"
    r = api.http.patch(
        f"/apis/accordion.dev/v1alpha1/namespaces/{api.ns}/trainingruns/pausable",
        json={"spec": {"suspend": False}},
        headers={"content-type": "application/merge-patch+json"},
    )
    wait_workers(api, {"pausable": 2})
    assert api.status("pausable")["startTime"] == started  # the same run, resumed


def test_operator_killed_mid_way_converges_without_orphans(
    api: Api, operator: Operator, capacity: int
) -> None:
    api.secret()
    create(api, "one", lo=1, hi=4)
    create(api, "two", lo=2, hi=4)
    create(api, "three", lo=1, hi=2)
    wait_workers(api, {"one": 4, "two": 4, "three": 2})
    operator.kill()
    # the world changes while nobody watches
    victim = api.workers("one")[0]["metadata"]["name"]
    r = api.http.delete(f"/api/v1/namespaces/{api.ns}/pods/{victim}")
    assert r.status_code == 200
    api.http.patch(
        f"/apis/accordion.dev/v1alpha1/namespaces/{api.ns}/trainingruns/two",
        json={"spec": {"workers": {"replicas": 2}}},
        headers={"content-type": "application/merge-patch+json"},
    )
    api.delete("three")
    create(api, "four", lo=1, hi=1)
    operator.start()
    wait_workers(api, {"one": 4, "two": 2, "four": 1}, timeout=40)
    runs = {"one", "two", "four"}

    def owners() -> set[str]:
        return {p["metadata"]["ownerReferences"][0]["name"] for p in api.pods()}

    # nothing left of "three", nothing unowned. The garbage collector removes "three"'s pods; on
    # a cluster whose CRD is seconds old it first has to discover TrainingRuns (every 30 s).
    poll(lambda: owners() == runs, 60, "only the live runs' pods", every=0.5)
    for run in runs:
        names = [p["metadata"]["name"] for p in api.workers(run)]
        assert len(names) == len(set(names))
        assert len(api.pods(f"accordion.dev/run={run},accordion.dev/role=launcher")) == 1
    items = api.http.get(
        f"/api/v1/namespaces/{api.ns}/secrets",
        params={"labelSelector": "accordion.dev/run=three"},
    ).json()["items"]
    assert [i for i in items if not i["metadata"].get("deletionTimestamp")] == []
    # the launchers' identity is the namespace's: one of each, kept while it has runs
    for kind in ("/api/v1/{}/serviceaccounts", "/apis/rbac.authorization.k8s.io/v1/{}/roles"):
        path = kind.format(f"namespaces/{api.ns}")
        names = [i["metadata"]["name"] for i in api.http.get(path).json()["items"]]
        assert names.count("accordion-launcher") == 1, names
        assert not [n for n in names if n.endswith("-launcher") and n != "accordion-launcher"]
