"""TrainingRuns admitted by the real Kueue (issue 19, part 2; docs/sharing.md, "Kueue"), on
kwok GPU nodes with the operator running: a run labelled `kueue.x-k8s.io/queue-name` starts
only once Kueue admits its Workload, on the flavor's nodes; a run behind a full ClusterQueue
waits with Kueue's reason; Kueue preempts a lower-priority run (`withinClusterQueue:
LowerPriority`), which waits and is readmitted; growth beyond the minimum is a workload slice
that Kueue admits only when its quota has room, so Kueue's usage always equals the run's GPUs."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
import yaml
from operator_support import Api, Operator

from accordion_dev import kueue as kq
from accordion_dev.cluster import REPO, Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

pytestmark = [pytest.mark.cluster, pytest.mark.kueue]  # kueue: run alone (tests/conftest.py)
GATE = "ElasticJobsViaWorkloadSlices"
MERGE = {"content-type": "application/merge-patch+json"}
#: a wait for Kueue, the operator and the scheduler, with the other test stream beside them
WAIT = 90


@pytest.fixture(scope="module")
def kueue_slices(cluster: Cluster) -> Cluster:
    """The session cluster with Kueue running with workload slices (its feature gate)."""
    cluster.config.kueue_feature_gates[GATE] = True
    # Kueue's visibility API server (beta, on by default) needs in-cluster delegated
    # authentication, which a manager outside the cluster does not have: it exits a few
    # seconds after start. These tests do not use it.
    cluster.config.kueue_feature_gates["VisibilityOnDemand"] = False
    cluster.start_kueue(log=print)
    config = yaml.safe_load((cluster.state_dir / "kueue" / "config.yaml").read_text())
    assert (config.get("featureGates") or {}).get(GATE), (
        f"Kueue was started earlier in this session without {GATE}: start it with the gate "
        "(ClusterConfig.kueue_feature_gates) before any test uses it"
    )
    return cluster


@pytest.fixture
def kapi(kueue_slices: Cluster, namespace: str) -> Iterator[Api]:
    """Runs in the test's namespace; the CRDs and Kueue are there before the operator starts."""
    with closing(Api(kueue_slices, namespace)) as a:
        a.secret()
        yield a


def cluster_queue(name: str, namespace: str, gpus: int) -> dict[str, Any]:
    """A ClusterQueue of `gpus` GPUs for one namespace's Workloads, preempting lower priorities
    inside it; it covers cpu and memory too (a run's pods request them: a resource that no
    ClusterQueue covers keeps a Workload pending)."""
    body = kq.cluster_queue(name, name, gpus, [namespace])
    group = body["spec"]["resourceGroups"][0]
    group["coveredResources"] = ["cpu", "memory", "nvidia.com/gpu"]
    group["flavors"][0]["resources"] = [
        {"name": "cpu", "nominalQuota": "1000"},
        {"name": "memory", "nominalQuota": "10000Gi"},
        {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
    ]
    body["spec"]["preemption"] = {"withinClusterQueue": "LowerPriority"}
    return body


@pytest.fixture
def queue(kapi: Api) -> Iterator[Callable[[int], str]]:
    """`make(gpus)`: a ResourceFlavor of the kwok nodes (node label type=kwok), a ClusterQueue
    of `gpus` GPUs for the test's namespace and a LocalQueue; returns the LocalQueue's name."""
    made: list[str] = []

    def make(gpus: int) -> str:
        name = f"t-{secrets.token_hex(4)}"
        for url, body in (
            (f"{kq.API}/resourceflavors", kq.resource_flavor(name, {"type": "kwok"})),
            (f"{kq.API}/clusterqueues", cluster_queue(name, kapi.ns, gpus)),
            (
                f"{kq.API}/namespaces/{kapi.ns}/localqueues",
                kq.local_queue(name, kapi.ns, name),
            ),
        ):
            r = kapi.http.post(url, json=body)
            assert r.status_code == 201, r.text
        made.append(name)
        return name

    yield make
    for name in made:
        kapi.http.delete(f"{kq.API}/clusterqueues/{name}")
        kapi.http.delete(f"{kq.API}/resourceflavors/{name}")


def queued_run(name: str, queue: str, **kw: Any) -> dict[str, Any]:
    body = run_body(name, **kw)
    body["metadata"]["labels"] = {kq.QUEUE_LABEL: queue}
    return body


def admitted(a: Api, run: str) -> tuple[str, str]:
    cond = a.condition(run, "Admitted")
    return cond.get("status", ""), cond.get("reason", "")


def workloads(a: Api) -> dict[str, dict[str, Any]]:
    r = a.http.get(f"{kq.API}/namespaces/{a.ns}/workloads")
    r.raise_for_status()
    return {w["metadata"]["name"]: w for w in r.json()["items"]}


def reserved_gpus(http: httpx.Client, cq: str) -> int:
    """The GPUs Kueue counts as reserved in ClusterQueue `cq`."""
    status = http.get(f"{kq.API}/clusterqueues/{cq}").json().get("status") or {}
    for flavor in status.get("flavorsReservation") or ():
        for res in flavor.get("resources") or ():
            if res["name"] == "nvidia.com/gpu":
                return int(res.get("total") or 0)
    return 0


def wait_reserved(a: Api, cq: str, gpus: int) -> None:
    """Until Kueue's ClusterQueue status (written after each admission) reserves `gpus` GPUs,
    and still does a moment later."""
    seen: list[int] = []

    def settled() -> bool:
        seen.append(reserved_gpus(a.http, cq))
        return seen[-2:] == [gpus, gpus]

    try:
        poll(settled, WAIT, what=f"ClusterQueue {cq} reserving {gpus} GPUs", every=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; seen {seen[-5:]}") from None


def wait_workers(a: Api, run: str, n: int, timeout: float = WAIT) -> None:
    poll(lambda: len(a.workers(run)) == n, timeout, what=f"{run}: {n} workers")


def test_kueue_admits_the_minimum_and_a_run_waits_behind_a_full_cluster_queue(
    kapi: Api, queue: Callable[[int], str], operator: Operator
) -> None:
    q = queue(2)
    assert kapi.create(queued_run("first", q, lo=2, hi=2)).status_code == 201
    poll(lambda: admitted(kapi, "first") == ("True", "AdmittedByKueue"), WAIT, what="admitted")
    wait_workers(kapi, "first", 2)
    # the Workload: the run's, for the launcher and the minimum, admitted by Kueue
    wl = workloads(kapi)["first-kueue-2"]
    run = kapi.get("first")
    assert wl["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [
        ("launcher", 1),
        ("workers", 2),
    ]
    assert wl["spec"]["queueName"] == q
    # the pods carry the flavor's node labels, added by the operator
    for pod in kapi.workers("first"):
        assert pod["spec"]["nodeSelector"] == {"type": "kwok"}
        assert pod["spec"]["nodeName"]
    wait_reserved(kapi, q, 2)
    message = kapi.condition("first", "Admitted")["message"]
    assert (
        message
        == f"admitted by Kueue in ClusterQueue {q} (Workload first-kueue-2): 2 workers (2 GPUs)"
    )
    # the ClusterQueue is full: the next run waits with Kueue's reason, and no pod
    assert kapi.create(queued_run("second", q, lo=1, hi=1)).status_code == 201
    poll(lambda: admitted(kapi, "second") == ("False", "WaitingForKueue"), WAIT, what="waits")
    poll(
        lambda: "insufficient unused quota" in kapi.condition("second", "Admitted")["message"],
        WAIT,
        what="Kueue's reason in the message",
    )
    assert kapi.status("second")["phase"] == "Queued"
    assert kapi.pods("accordion.dev/run=second") == []
    # a run without the label is the allocator's, which does not wait for Kueue
    assert kapi.create(run_body("plain", lo=1, hi=1)).status_code == 201
    poll(lambda: admitted(kapi, "plain") == ("True", "MinimumWorkersFit"), WAIT, what="plain")
    assert "plain-kueue-1" not in workloads(kapi)
    # the first run ends: its Workload goes with it, and Kueue admits the second
    kapi.delete("first")
    poll(lambda: admitted(kapi, "second") == ("True", "AdmittedByKueue"), WAIT, what="second")
    wait_workers(kapi, "second", 1)
    assert set(workloads(kapi)) == {"second-kueue-1"}


def test_kueue_preempts_a_lower_priority_run_which_waits_and_is_readmitted(
    kapi: Api,
    queue: Callable[[int], str],
    priority_class: Callable[..., str],
    operator: Operator,
) -> None:
    low, high = priority_class(100), priority_class(1000)
    q = queue(2)
    assert kapi.create(queued_run("low", q, lo=2, hi=2, priority_class=low)).status_code == 201
    wait_workers(kapi, "low", 2)
    launcher = kapi.pods("accordion.dev/run=low,accordion.dev/role=launcher")[0]
    assert workloads(kapi)["low-kueue-2"]["spec"]["priority"] == 100
    assert kapi.create(queued_run("high", q, lo=2, hi=2, priority_class=high)).status_code == 201
    poll(
        lambda: admitted(kapi, "low") == ("False", "EvictedByKueuePreempted"),
        WAIT,
        what="low evicted by Kueue",
    )
    message = kapi.condition("low", "Admitted")["message"]
    assert "Kueue evicted Workload" in message
    assert "resumes from its last checkpoint" in message
    wait_workers(kapi, "high", 2)
    # (its status patch may land just after its pods)
    poll(lambda: admitted(kapi, "high") == ("True", "AdmittedByKueue"), WAIT, what="high admitted")
    poll(lambda: kapi.pods("accordion.dev/run=low") == [], WAIT, what="low's pods gone")
    assert kapi.status("low")["phase"] == "Queued"
    assert any(e["reason"] == "EvictedByKueuePreempted" for e in kapi.events("low"))
    wait_reserved(kapi, q, 2)  # high's only: low's quota went back at once
    # low waits in the queue again, saying why, until high is gone
    poll(lambda: "low-kueue-2" in workloads(kapi), WAIT, what="low queued again")
    assert admitted(kapi, "low") == ("False", "EvictedByKueuePreempted")
    kapi.delete("high")
    poll(lambda: admitted(kapi, "low") == ("True", "AdmittedByKueue"), WAIT, what="readmitted")
    wait_workers(kapi, "low", 2)
    relaunched = kapi.pods("accordion.dev/run=low,accordion.dev/role=launcher")[0]
    assert relaunched["metadata"]["uid"] != launcher["metadata"]["uid"]  # restarts, resumes


def test_growth_is_a_workload_slice_kueue_admits_when_its_quota_has_room(
    kapi: Api, queue: Callable[[int], str], operator: Operator
) -> None:
    q = queue(2)
    assert kapi.create(queued_run("other", q, lo=1, hi=1)).status_code == 201
    wait_workers(kapi, "other", 1)
    assert kapi.create(queued_run("grow", q, lo=1, hi=3)).status_code == 201
    wait_workers(kapi, "grow", 1)
    # the minimum is admitted; the slice for the rest waits: the queue is full
    poll(lambda: "grow-kueue-3" in workloads(kapi), WAIT, what="the growth slice")
    slice_ = workloads(kapi)["grow-kueue-3"]
    assert (
        slice_["metadata"]["annotations"]["kueue.x-k8s.io/workload-slice-replacement-for"]
        == f"{kapi.ns}/grow-kueue-1"
    )
    poll(
        lambda: (
            "a slice of 3 workers waits for Kueue" in kapi.condition("grow", "Admitted")["message"]
        ),
        WAIT,
        what="the waiting slice in the message",
    )
    assert len(kapi.workers("grow")) == 1
    wait_reserved(kapi, q, 2)
    # the admin gives the queue 4 GPUs: with the old slice's GPU counted as its own, the slice
    # of 3 fits (1 + 3), Kueue admits it and finishes the old one; the run grows
    r = kapi.http.patch(
        f"{kq.API}/clusterqueues/{q}",
        json={"spec": cluster_queue(q, kapi.ns, 4)["spec"]},
        headers=MERGE,
    )
    assert r.status_code == 200, r.text
    wait_workers(kapi, "grow", 3)
    poll(lambda: "grow-kueue-1" not in workloads(kapi), WAIT, what="the old slice deleted")
    wait_reserved(kapi, q, 4)  # other's 1 + grow's 3: counted once
    # kubectl scale down: a smaller slice, admitted at once; the extra worker goes
    r = kapi.http.patch(
        f"/apis/accordion.dev/v1alpha1/namespaces/{kapi.ns}/trainingruns/grow",
        json={"spec": {"workers": {"replicas": 2}}},
        headers=MERGE,
    )
    assert r.status_code == 200, r.text
    wait_workers(kapi, "grow", 2)
    poll(lambda: set(workloads(kapi)) == {"other-kueue-1", "grow-kueue-2"}, WAIT, what="slices")
    wait_reserved(kapi, q, 3)


def test_the_kueue_example_is_accepted_by_kueue(kapi: Api) -> None:
    """examples/sharing/kueue-queues.yaml against Kueue's CRDs and webhooks (the run beside it
    is checked with the other examples, test_examples_accepted.py)."""
    path = REPO / "examples" / "sharing" / "kueue-queues.yaml"
    out = kapi.cluster.kubectl(
        "apply", "--dry-run=server", "-n", kapi.ns, "-f", str(path), check=False
    )
    assert out.count("created (server dry run)") == 3, out
