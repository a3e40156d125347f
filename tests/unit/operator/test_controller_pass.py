"""Whole controller passes over the cache against an in-memory apiserver: what a pass acts on,
in which order, and that settled runs cost no parsing (no cluster; the real apiserver is in
tests/cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from merge_patch import merge
from trainingrun_factory import make_body

from accordion_operator.config import Config
from accordion_operator.core.kube import ApiError
from accordion_operator.core.objects import Resource
from accordion_operator.trainingrun.cache import CachedRun, ClusterCache
from accordion_operator.trainingrun.controller import Controller


def node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class Apiserver:
    """Keeps the runs, answers writes like the apiserver (new resourceVersion each time) and
    records them in order; pods it creates are bound, Running and Ready at once."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache
        self.runs: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.rv = 100

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def add_run(self, name: str, created: str, namespace: str = "team-a") -> None:
        body = make_body(
            metadata={
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "creationTimestamp": created,
            },
            spec={"workers": {"min": 1, "max": 1}},
        )
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.runs[name] = body
        self.cache.apply("run", "ADDED", body)

    async def secret_keys(self, namespace: str, name: str) -> tuple[frozenset[str], str]:
        return frozenset({"accessKey", "secretKey"}), "1"

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = {**obj["metadata"], "resourceVersion": self._next_rv()}
        self.writes.append(
            (f"create {obj['kind']}", meta.get("labels", {}).get("accordion.dev/run", ""))
        )
        if obj["kind"] == "Pod":
            ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            obj = {**obj, "spec": {**obj["spec"], "nodeName": "n1"}, "status": ready}
        return 201, {**obj, "metadata": meta}

    async def patch_status(
        self, _resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        self.writes.append(("status", name))
        body = merge(self.runs[name], {"status": patch})
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.runs[name] = body
        return 200, body

    async def event(self, _ref: Any, _type: str, reason: str, _message: str) -> None:
        self.writes.append((f"event {reason}", _ref["name"]))


@pytest.fixture
def cluster() -> tuple[Controller, Apiserver]:
    cfg = Config(batch_runs=1)  # one run at a time: the order of the writes is the pass's order
    cache = ClusterCache(cfg)
    cache.apply("node", "ADDED", node("n1", 8))
    api = Apiserver(cache)
    return Controller(cfg, api, cache), api  # type: ignore[arg-type]


async def test_new_runs_are_acted_on_before_status_refreshes_of_older_ones(
    cluster: tuple[Controller, Apiserver],
) -> None:
    ctl, api = cluster
    api.add_run("old", "2026-01-01T00:00:00Z")
    await ctl.reconcile_all()  # admits "old" and creates its pods, which are Ready at once
    api.writes.clear()
    # a status refresh of "old" is due (its workers are ready), and a newer run arrived
    api.add_run("new", "2026-01-01T00:05:00Z")
    await ctl.reconcile_all()
    acted = [run for _, run in api.writes]
    assert acted[0] == "new"
    assert acted[-1] == "old"
    assert ("status", "old") in api.writes


async def test_a_pass_over_settled_runs_parses_none_of_them(
    cluster: tuple[Controller, Apiserver], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctl, api = cluster
    for i in range(5):
        api.add_run(f"r{i}", f"2026-01-01T00:0{i}:00Z")
    for _ in range(4):  # admit, create pods, take in the responses, settle
        await ctl.reconcile_all()
    assert ctl.last.actions == 0
    parsed: list[str] = []
    real = CachedRun.model

    def counting(self: CachedRun) -> Any:
        parsed.append(self.name)
        return real(self)

    monkeypatch.setattr(CachedRun, "model", counting)
    await ctl.reconcile_all()
    assert parsed == []
    assert ctl.last.admitted == 5
    # one run changes: only it is parsed again
    api.runs["r3"]["spec"]["suspend"] = True
    api.runs["r3"]["metadata"]["resourceVersion"] = api._next_rv()
    ctl.cache.apply("run", "MODIFIED", api.runs["r3"])
    await ctl.reconcile_all()
    assert set(parsed) == {"r3"}


@pytest.mark.parametrize("yield_seconds", [1e-9, 0.0])
async def test_a_long_pass_yields_to_runs_created_while_it_acts(yield_seconds: float) -> None:
    cfg = Config(batch_runs=1, pass_yield_seconds=yield_seconds)
    cache = ClusterCache(cfg)
    cache.apply("node", "ADDED", node("n1", 8))
    api = Apiserver(cache)
    ctl = Controller(cfg, api, cache)  # type: ignore[arg-type]
    api.add_run("a", "2026-01-01T00:00:00Z")
    api.add_run("b", "2026-01-01T00:01:00Z")
    create = api.create

    async def create_then_arrival(obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "c" not in api.runs:
            api.add_run("c", "2026-01-01T00:02:00Z")  # created while the pass acts on "a"
        await asyncio.sleep(0.05)  # acting takes longer than the pass's fixed cost
        return await create(obj)

    api.create = create_then_arrival  # type: ignore[method-assign]
    delay = await ctl.reconcile_all()
    # ("" is the namespace's launcher identity, written with its first run)
    first = {run for _, run in api.writes} - {""}
    if yield_seconds:
        # ended after its first batch, asking for the next pass at once
        assert first == {"a"}
        assert ctl.last.yielded
        assert delay == 0.0
        await ctl.reconcile_all()
        assert {run for _, run in api.writes} - {""} == {"a", "b", "c"}
    else:
        assert first == {"a", "b"}  # c waits for the next pass
        assert not ctl.last.yielded


def lookalike(run: str, owner_uid: str) -> dict[str, Any]:
    """A pod with a run's launcher labels, controlled by something else."""
    return {
        "metadata": {
            "name": f"{run}-launcher-copy",
            "namespace": "team-a",
            "resourceVersion": "50",
            "labels": {
                "accordion.dev/run": run,
                "accordion.dev/role": "launcher",
                "app.kubernetes.io/managed-by": "accordion-operator",
            },
            "ownerReferences": [{"kind": "ReplicaSet", "uid": owner_uid, "controller": True}],
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"phase": "Running"},
    }


async def test_a_pod_with_a_runs_labels_but_not_its_controller_is_ignored_and_reported(
    cluster: tuple[Controller, Apiserver],
) -> None:
    """A tenant's pod (or one left by a deleted run of the same name) labelled as the run's
    launcher must not stand in for it: the run creates its own, and the Event says why."""
    ctl, api = cluster
    ctl.cache.apply("pod", "ADDED", lookalike("r", "someone-else"))
    api.add_run("r", "2026-01-01T00:00:00Z")
    await ctl.reconcile_all()
    assert ("create Pod", "r") in api.writes  # its own launcher and worker
    assert api.writes.count(("event IgnoredPod", "r")) == 1
    api.writes.clear()
    await ctl.reconcile_all()
    assert ("event IgnoredPod", "r") not in api.writes  # reported once


async def test_a_failing_secret_read_in_one_namespace_does_not_stop_the_pass(
    cluster: tuple[Controller, Apiserver],
) -> None:
    """A 5xx (or a webhook's refusal) reading one namespace's Secrets leaves that run as it is
    for this pass; every other run is decided and admitted as usual."""
    ctl, api = cluster
    real = api.secret_keys

    async def flaky(namespace: str, name: str) -> tuple[frozenset[str], str]:
        if namespace == "team-b":
            raise ApiError(503, "GET secret: 503 the server is currently unable to handle it")
        return await real(namespace, name)

    api.secret_keys = flaky  # type: ignore[method-assign]
    api.add_run("ok", "2026-01-01T00:00:00Z")
    api.add_run("stuck", "2026-01-01T00:00:01Z", namespace="team-b")
    delay = await ctl.reconcile_all()
    assert ("create Pod", "ok") in api.writes
    assert not [w for w in api.writes if w[1] == "stuck"]
    assert delay is not None
    assert delay < 5  # retried soon, not at the resync
    api.secret_keys = real  # type: ignore[method-assign]
    await ctl.reconcile_all()
    assert ("create Pod", "stuck") in api.writes


class Refusing(Apiserver):
    """Refuses every pod as a namespace enforcing `restricted` refuses a non-compliant one, or
    (with `taken`) answers 409 for a name held by another controller's pod."""

    def __init__(self, cache: ClusterCache, taken: bool = False, orphan: bool = False) -> None:
        super().__init__(cache)
        self.taken = taken or orphan
        self.orphan = orphan
        self.pod_posts = 0
        self.deleted: list[str] = []

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if obj["kind"] != "Pod":
            return await super().create(obj)
        self.pod_posts += 1
        if self.taken:
            return 409, {"message": f'pods "{obj["metadata"]["name"]}" already exists'}
        return 403, {"message": 'pods "x" is forbidden: violates PodSecurity "restricted:latest"'}

    async def request(self, method: str, version: str, url: str, ns: str) -> tuple[int, Any]:
        name = url.split("/")[-1]
        if self.orphan:  # what `kubectl delete tr --cascade=orphan` leaves: labels, no owner
            labels = {
                "accordion.dev/run": "r",
                "app.kubernetes.io/managed-by": "accordion-operator",
            }
            return 200, {"metadata": {"name": name, "labels": labels}}
        owner = [{"kind": "ReplicaSet", "uid": "someone-else", "controller": True}]
        return 200, {"metadata": {"name": name, "ownerReferences": owner}}

    async def delete_pod(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        self.deleted.append(name)
        return 200, {"kind": "Status"}


def refusing(taken: bool = False, orphan: bool = False) -> tuple[Controller, Refusing, list[float]]:
    cfg = Config()
    cache = ClusterCache(cfg)
    cache.apply("node", "ADDED", node("n1", 8))
    api = Refusing(cache, taken, orphan)
    now = [1_800_000_000.0]
    ctl = Controller(cfg, api, cache, clock=lambda: now[0])  # type: ignore[arg-type]
    return ctl, api, now


async def test_refused_pods_back_off_and_the_reason_reaches_the_running_condition() -> None:
    ctl, api, now = refusing()
    api.add_run("r", "2026-01-01T00:00:00Z")
    delay = await ctl.reconcile_all()
    assert api.pod_posts == 1  # the launcher (hosting worker 0), refused
    assert api.writes.count(("event CreateFailed", "r")) == 1
    assert delay is not None
    assert delay <= 2.0  # the backoff's first wait
    posts = api.pod_posts
    await ctl.reconcile_all()  # within the backoff: not asked again
    assert api.pod_posts == posts
    running = next(c for c in api.runs["r"]["status"]["conditions"] if c["type"] == "Running")
    assert running["reason"] == "PodCreationFailed"
    assert "violates PodSecurity" in running["message"]
    now[0] += 3
    await ctl.reconcile_all()  # the backoff ended: asked again, refused again, no new Event
    assert api.pod_posts > posts
    assert api.writes.count(("event CreateFailed", "r")) == 1
    assert ctl._create_failures["uid-r"].count == 2


async def test_a_pod_name_held_by_another_controller_is_said_in_the_condition() -> None:
    ctl, api, now = refusing(taken=True)
    api.add_run("r", "2026-01-01T00:00:00Z")
    await ctl.reconcile_all()
    now[0] += 3
    await ctl.reconcile_all()
    running = next(c for c in api.runs["r"]["status"]["conditions"] if c["type"] == "Running")
    assert running["reason"] == "PodCreationFailed"
    assert "is not controlled by this run" in running["message"]


async def test_pods_left_by_a_deleted_run_of_the_same_name_are_removed() -> None:
    """`kubectl delete tr r --cascade=orphan`, then `kubectl apply` r again: the old pods hold
    the new run's names, carry our labels and no controller. They are ours to remove."""
    ctl, api, _ = refusing(orphan=True)
    api.add_run("r", "2026-01-01T00:00:00Z")
    await ctl.reconcile_all()
    assert sorted(api.deleted) == ["r-launcher"]  # it hosts worker 0: the run's one pod
    assert "being removed" in ctl._create_failures["uid-r"].message


async def test_a_one_worker_run_whose_launcher_hosts_it_gets_no_ssh_secret(
    cluster: tuple[Controller, Apiserver],
) -> None:
    """Its launcher is its only Horovod host for good (max 1): it makes its key pair in its own
    pod (builders.alone), so the run costs no Secret; a run that may grow gets one."""
    ctl, api = cluster
    api.add_run("alone", "2026-01-01T00:00:00Z")
    await ctl.reconcile_all()
    # the namespace's launcher identity (ServiceAccount, Role, RoleBinding) and the one pod
    assert [w for w in api.writes if w[0].startswith("create") and w[1]] == [
        ("create Pod", "alone")
    ]
    await ctl.reconcile_all()  # a later pass does not create it either
    assert ("create Secret", "alone") not in api.writes
    grows = make_body(
        metadata={"name": "grows", "namespace": "team-a", "uid": "uid-grows"},
        spec={"workers": {"min": 1, "max": 2}},
    )
    grows["metadata"] |= {
        "resourceVersion": api._next_rv(),
        "creationTimestamp": "2026-01-01T00:01:00Z",
    }
    api.runs["grows"] = grows
    ctl.cache.apply("run", "ADDED", grows)
    await ctl.reconcile_all()
    assert ("create Secret", "grows") in api.writes
