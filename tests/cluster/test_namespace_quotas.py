"""Namespace GPU quotas and fair share between namespaces (issue 19, part 1), on kwok GPU nodes
with the operator running: a ResourceQuota on `requests.nvidia.com/gpu` caps what a namespace's
runs are granted, a minimum that does not fit waits with `QuotaExceeded` and the numbers and is
admitted once the quota is raised; elastic surplus is shared between namespaces by their
weights (the `accordion.dev/fair-share-weight` annotation), not by how many runs each has."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, closing
from typing import Any

import pytest
from operator_support import Api, Operator
from tenancy_support import tenant_namespace

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

pytestmark = pytest.mark.cluster
KWOK = {"type": "kwok"}
GPU = "requests.nvidia.com/gpu"


@pytest.fixture
def gpus(api: Api) -> int:
    r = api.http.get("/api/v1/nodes", params={"labelSelector": "type=kwok"})
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in r.json()["items"])
    assert total >= 16, total
    return total


@pytest.fixture
def tenants(cluster: Cluster) -> Iterator[list[Api]]:
    """Two more tenants' namespaces, with the credentials Secret `run_body` names."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(closing(Api(cluster, stack.enter_context(tenant_namespace(
                cluster, f"fair-{i}"
            )))))
            for i in range(2)
        ]  # fmt: skip


def set_quota(a: Api, hard: int, name: str = "gpus", *, wait: bool = True) -> None:
    """Create or replace the namespace's ResourceQuota on GPU requests; with `wait`, until the
    quota controller has copied the limit to status.hard (what the apiserver enforces)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name},
        "spec": {"hard": {GPU: str(hard)}},
    }
    url = f"/api/v1/namespaces/{a.ns}/resourcequotas"
    r = a.http.post(url, json=body)
    if r.status_code == 409:
        patch = {"spec": {"hard": {GPU: str(hard)}}}
        r = a.http.patch(
            f"{url}/{name}",
            json=patch,
            headers={"content-type": "application/merge-patch+json"},
        )
    assert r.status_code in (200, 201), r.text

    def enforced() -> bool:  # the apiserver admits pods against status.hard
        got = a.http.get(f"{url}/{name}").json()
        return (got.get("status") or {}).get("hard", {}).get(GPU) == str(hard)

    if wait:
        poll(enforced, 30, what=f"quota {name} enforced at {hard}")


def set_weight(a: Api, weight: str) -> None:
    r = a.http.patch(
        f"/api/v1/namespaces/{a.ns}",
        json={"metadata": {"annotations": {"accordion.dev/fair-share-weight": weight}}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text


def worker_gpus(a: Api) -> int:
    """GPUs requested by the namespace's live Horovod hosts (bound or not): worker pods and
    launchers that host worker 0."""
    total = 0
    for pod in a.pods("accordion.dev/worker-index"):
        for c in pod["spec"]["containers"]:
            total += int((c.get("resources") or {}).get("requests", {}).get("nvidia.com/gpu", 0))
    return total


def admitted(a: Api, run: str) -> tuple[str, str]:
    cond = a.condition(run, "Admitted")
    return cond.get("status", ""), cond.get("reason", "")


def wait_shares(expected: dict[str, int], spaces: dict[str, Api], timeout: float = 60) -> None:
    """Until each namespace's workers hold the expected GPUs (and keep holding them for one
    more look: no overshoot on the way counts as settled)."""
    seen: list[dict[str, int]] = []

    def settled() -> bool:
        seen.append({k: worker_gpus(a) for k, a in spaces.items()})
        return len(seen) > 1 and seen[-1] == seen[-2] == expected

    try:
        poll(settled, timeout, what=f"GPUs per namespace {expected}", every=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last seen {seen[-3:]}") from None


def test_a_quota_caps_a_namespace_and_a_raised_quota_admits_the_waiting_run(
    api: Api, tenants: list[Api], operator: Operator, gpus: int
) -> None:
    other = tenants[0]
    api.secret()
    set_quota(api, 4)
    # team A's elastic run would take 8 GPUs; its quota allows 4. Team B has no quota.
    assert api.create(run_body("grow", nodeSelector=KWOK, lo=1, hi=8)).status_code == 201
    assert other.create(run_body("free", nodeSelector=KWOK, lo=1, hi=8)).status_code == 201
    wait_shares({"a": 4, "b": 8}, {"a": api, "b": other})
    assert admitted(api, "grow") == ("True", "MinimumWorkersFit")
    message = api.condition("grow", "Admitted")["message"]
    assert message == (
        f"granted 4 of 8 requested workers (4 GPUs); ResourceQuota {api.ns}/gpus caps {GPU} at 4"
    )
    # a second run whose minimum (4) does not fit what the quota leaves (4 - grow's minimum 1)
    assert api.create(run_body("waits", nodeSelector=KWOK, lo=4, hi=4)).status_code == 201
    poll(lambda: admitted(api, "waits") == ("False", "QuotaExceeded"), 30, what="waits refused")
    message = api.condition("waits", "Admitted")["message"]
    assert message.startswith(
        f"ResourceQuota {api.ns}/gpus allows {GPU}: 4; 1 used (1 by the minimums of runs "
        "admitted ahead of this one, 0 by other pods), the minimum of 4 workers needs 4"
    ), message
    assert "ask a cluster admin to raise the quota" in message
    assert api.pods("accordion.dev/run=waits") == []
    assert any(e["reason"] == "QuotaExceeded" for e in api.events("waits"))
    assert worker_gpus(api) == 4  # the cap held the whole time
    # the cluster admin raises the quota: the run is admitted with no action of its author
    set_quota(api, 8, wait=False)
    poll(lambda: admitted(api, "waits") == ("True", "MinimumWorkersFit"), 60, what="admitted")
    wait_shares({"a": 8, "b": 8}, {"a": api, "b": other})
    assert len(api.workers("waits")) == 4
    assert len(api.workers("grow")) == 4
    # the apiserver's own count agrees: the quota never refused a pod the operator made
    quota = api.http.get(f"/api/v1/namespaces/{api.ns}/resourcequotas/gpus").json()
    assert int(quota["status"]["used"][GPU]) <= 8
    assert not [
        e for e in api.events("grow") + api.events("waits") if e["reason"] == "CreateFailed"
    ]


def test_surplus_is_shared_by_namespace_weight_not_by_run_count(
    api: Api, tenants: list[Api], operator: Operator, gpus: int
) -> None:
    """Three namespaces: A (quota 4) and B with four runs each, C with one; each run could take
    every GPU. A stops at its quota, B and C share the rest evenly although B has four runs;
    then C's weight 3 gives it three quarters of what A leaves."""
    b, c = tenants
    api.secret()
    set_quota(api, 4)
    for i in range(4):
        assert api.create(run_body(f"a{i}", nodeSelector=KWOK, hi=gpus)).status_code == 201
        assert b.create(run_body(f"b{i}", nodeSelector=KWOK, hi=gpus)).status_code == 201
    assert c.create(run_body("c0", nodeSelector=KWOK, hi=gpus)).status_code == 201
    spaces = {"a": api, "b": b, "c": c}
    rest = gpus - 4
    wait_shares({"a": 4, "b": rest // 2, "c": rest - rest // 2}, spaces)
    # within B, today's water-filling: its four runs hold equal shares (within one worker) once
    # the cooldown (ACCORDION_SCALE_COOLDOWN_SECONDS, 5 s here) lets the first one, which grew
    # alone, give workers back
    counts: list[list[int]] = []

    def even() -> bool:
        counts.append([len(b.workers(f"b{i}")) for i in range(4)])
        return max(counts[-1]) - min(counts[-1]) <= 1 and sum(counts[-1]) == rest // 2

    try:
        poll(even, 60, what="B's runs within one worker of each other", every=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last seen {counts[-3:]}") from None
    set_weight(c, "3")
    wait_shares({"a": 4, "b": rest // 4, "c": rest - rest // 4}, spaces)
    for i in range(4):
        assert admitted(b, f"b{i}") == ("True", "MinimumWorkersFit")
