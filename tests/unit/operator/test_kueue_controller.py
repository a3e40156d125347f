"""Controller passes over Kueue-labelled runs against an in-memory apiserver (the real Kueue is
in tests/cluster/test_kueue_admission.py): a run waits for its Workload's admission, starts on
the assigned flavor, and its GPUs are never the allocator's to give again; without Kueue's API
the run is told so and every other run goes on."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

from merge_patch import merge
from trainingrun_factory import make_body

from accordion_operator.config import Config
from accordion_operator.core.kube import ApiError
from accordion_operator.core.objects import Resource
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller

QUEUE = {"kueue.x-k8s.io/queue-name": "q"}


def node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"gpu": "a100"}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class Apiserver:
    """Runs, pods and Workloads in memory; pods it creates are bound, Running and Ready."""

    def __init__(self, cache: ClusterCache, kueue: bool) -> None:
        self.cache = cache
        self.cfg = cache.cfg
        self.kueue = kueue
        self.runs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.workloads: dict[str, dict[str, Any]] = {}
        self.rv = 100

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def add_run(self, name: str, labels: dict[str, str], lo: int = 1, hi: int = 4) -> None:
        body = make_body(
            metadata={"name": name, "uid": f"uid-{name}", "labels": labels},
            spec={"workers": {"min": lo, "max": hi, "gpusPerWorker": 2}},
        )
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.runs[name] = body
        self.cache.apply("run", "ADDED", body)

    async def secret_keys(self, namespace: str, name: str) -> tuple[frozenset[str], str]:
        return frozenset({"accessKey", "secretKey"}), "1"

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = {**obj["metadata"], "resourceVersion": self._next_rv()}
        if obj["kind"] == "Pod":
            ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            obj = {**obj, "spec": {**obj["spec"], "nodeName": "n1"}, "status": ready}
            self.pods[meta["name"]] = {**obj, "metadata": meta}
        return 201, {**obj, "metadata": meta}

    async def request(
        self, method: str, version: str, url: str, namespace: str | None = None,
        body: dict[str, Any] | None = None, **_: Any,
    ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        assert version == "kueue.x-k8s.io/v1beta2", (method, version, url)
        if method == "POST":
            assert body is not None
            name = body["metadata"]["name"]
            if name in self.workloads:
                return 409, {"message": "exists"}
            stored = copy.deepcopy(body)
            stored["metadata"] |= {
                "resourceVersion": self._next_rv(),
                "creationTimestamp": f"2026-01-01T00:00:{len(self.workloads):02d}Z",
            }
            self.workloads[name] = stored
            return 201, stored
        assert method == "DELETE"
        name = url.split("/", 1)[1]
        gone = self.workloads.pop(name, None)
        if gone is None:
            return 404, {}
        self.cache.apply("workload", "DELETED", gone)
        return 200, gone

    async def list_pages(
        self, version: str, plural: str, namespace: str | None, *_: Any, **__: Any
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        if not self.kueue:
            raise ApiError(404, f"LIST {plural}: 404 the server could not find the resource")
        yield list(self.workloads.values()), "1"

    async def list_watch(self, _sink: Any, *_: Any) -> None:
        """The tests feed the cache themselves."""

    async def patch_status(
        self, _resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        body = merge(self.runs[name], {"status": patch})
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.runs[name] = body
        return 200, body

    async def delete_pod(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        pod = self.pods.pop(name, None)
        if pod is None:
            return 404, {}
        self.cache.apply("pod", "DELETED", pod)
        return 200, {}

    async def event(self, _ref: Any, _type: str, reason: str, _message: str) -> None:
        pass

    def kueue_admits(self, name: str, flavor: str = "a100", evict: str | None = None) -> None:
        """Play Kueue: admit a Workload (or evict it)."""
        wl = self.workloads[name]
        conds = [
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
            {"type": "Admitted", "status": "True", "reason": "Admitted"},
        ]
        if evict:
            conds.append({"type": "Evicted", "status": "True", "reason": evict, "message": "m"})
        count = wl["spec"]["podSets"][1]["count"]
        wl["status"] = {
            "conditions": conds,
            "admission": {
                "clusterQueue": "cq",
                "podSetAssignments": [
                    {"name": "launcher", "flavors": {"cpu": "default"}, "count": 1},
                    {"name": "workers", "flavors": {"nvidia.com/gpu": flavor}, "count": count},
                ],
            },
        }
        wl["metadata"]["resourceVersion"] = self._next_rv()
        self.cache.apply("workload", "MODIFIED", wl)

    def status(self, run: str) -> dict[str, Any]:
        return self.runs[run].get("status") or {}

    def admitted(self, run: str) -> tuple[str, str]:
        cond = next(c for c in self.status(run)["conditions"] if c["type"] == "Admitted")
        return cond["status"], cond["reason"]

    def workers(self, run: str) -> list[dict[str, Any]]:
        """The run's Horovod hosts: worker pods, and a launcher that hosts worker 0."""
        return [
            p
            for p in self.pods.values()
            if p["metadata"]["labels"]["accordion.dev/run"] == run
            and "accordion.dev/worker-index" in p["metadata"]["labels"]
        ]


def controller(kueue: bool) -> tuple[Controller, Apiserver]:
    cfg = Config()
    cache = ClusterCache(cfg)
    cache.apply("node", "ADDED", node("n1", 8))
    api = Apiserver(cache, kueue)
    return Controller(cfg, api, cache), api  # type: ignore[arg-type]


async def passes(ctl: Controller, n: int = 3) -> None:
    for _ in range(n):
        await ctl.reconcile_all()


async def probe(ctl: Controller) -> None:
    """Run the Kueue watcher until its first answer is in."""
    stop = asyncio.Event()
    task = asyncio.create_task(ctl._watch_kueue(stop))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if ctl.cache.kueue.served is not None:
            break
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_without_kueue_a_labelled_run_is_told_so_and_others_run() -> None:
    ctl, api = controller(kueue=False)
    api.add_run("k", QUEUE)
    api.add_run("plain", {})
    await passes(ctl, 1)
    # before the probe answered, the labelled run is left as it was
    assert "status" not in api.runs["k"]
    assert api.admitted("plain") == ("True", "MinimumWorkersFit")
    await probe(ctl)
    assert ctl.cache.kueue.served is False
    await passes(ctl)
    assert api.admitted("k") == ("False", "KueueUnavailable")
    assert api.status("k")["phase"] == "Queued"
    assert api.workers("k") == []
    assert len(api.workers("plain")) == 4
    assert api.workloads == {}


async def test_a_labelled_run_starts_only_once_kueue_admits_it_on_the_assigned_flavor() -> None:
    ctl, api = controller(kueue=True)
    ctl.cache.apply(
        "resourceflavor",
        None,
        {"metadata": {"name": "a100"}, "spec": {"nodeLabels": {"gpu": "a100"}}},
    )
    await probe(ctl)
    assert ctl.cache.kueue.served is True
    ctl.cache.synced |= {("workload", ""), ("resourceflavor", "")}
    api.add_run("k", QUEUE, lo=1, hi=2)
    await passes(ctl)
    assert list(api.workloads) == ["k-kueue-1"]
    assert api.admitted("k") == ("False", "WaitingForKueue")
    assert api.pods == {}
    # an unlabelled run takes every free GPU meanwhile: the allocator does not wait for Kueue
    api.add_run("plain", {}, lo=1, hi=4)
    await passes(ctl)
    assert len(api.workers("plain")) == 4
    api.kueue_admits("k-kueue-1")
    await passes(ctl)
    assert api.admitted("k") == ("True", "AdmittedByKueue")
    (worker,) = api.workers("k")
    assert worker["spec"]["nodeSelector"] == {"gpu": "a100"}
    # k's pods are busy GPUs to the allocator (counted once): plain gives one worker back
    assert len(api.workers("plain")) == 3
    # growth beyond the minimum is a slice that replaces the admitted Workload
    grow = api.workloads["k-kueue-2"]
    assert grow["metadata"]["annotations"]["kueue.x-k8s.io/workload-slice-replacement-for"] == (
        "team-a/k-kueue-1"
    )
    assert len(api.workers("k")) == 1  # not before Kueue admits it
    api.kueue_admits("k-kueue-2")
    await passes(ctl)
    assert len(api.workers("k")) == 2
    assert list(api.workloads) == ["k-kueue-2"]  # the replaced slice is gone
    # the node's 8 GPUs: 4 are k's (Kueue's), 4 plain's
    assert len(api.workers("plain")) == 2
    # Kueue evicts: every pod goes, and a new minimum queues with the reason
    api.kueue_admits("k-kueue-2", evict="Preempted")
    await passes(ctl)
    assert api.workers("k") == []
    assert api.admitted("k") == ("False", "EvictedByKueuePreempted")
    assert list(api.workloads) == ["k-kueue-1"]
    # suspended: its Workloads are deleted
    api.runs["k"]["spec"]["suspend"] = True
    api.runs["k"]["metadata"]["resourceVersion"] = api._next_rv()
    ctl.cache.apply("run", "MODIFIED", api.runs["k"])
    await passes(ctl)
    assert api.workloads == {}
    assert api.status("k")["phase"] == "Suspended"


async def test_a_run_whose_label_is_removed_goes_to_the_allocator_and_frees_kueues_quota() -> None:
    ctl, api = controller(kueue=True)
    await probe(ctl)
    ctl.cache.synced |= {("workload", ""), ("resourceflavor", "")}
    api.add_run("k", QUEUE, lo=1, hi=1)
    await passes(ctl)
    api.kueue_admits("k-kueue-1")
    await passes(ctl)
    assert api.admitted("k") == ("True", "AdmittedByKueue")
    api.runs["k"]["metadata"]["labels"] = {}
    api.runs["k"]["metadata"]["resourceVersion"] = api._next_rv()
    ctl.cache.apply("run", "MODIFIED", api.runs["k"])
    await passes(ctl)
    assert api.workloads == {}
    assert api.admitted("k") == ("True", "MinimumWorkersFit")
    assert len(api.workers("k")) == 1


async def test_a_refused_workload_is_reported_once_and_tried_again() -> None:
    ctl, api = controller(kueue=True)
    await probe(ctl)
    ctl.cache.synced |= {("workload", ""), ("resourceflavor", "")}
    events: list[str] = []

    async def event(_ref: Any, _type: str, reason: str, message: str) -> None:
        events.append(f"{reason}: {message}")

    async def refuse(*_: Any, **__: Any) -> tuple[int, dict[str, Any]]:
        return 403, {"message": "denied by a webhook"}

    real = api.request
    api.event = event  # type: ignore[method-assign]
    api.request = refuse  # type: ignore[method-assign]
    api.add_run("k", QUEUE)
    await passes(ctl)
    assert events == [
        "WorkloadCreateFailed: creating Kueue Workload k-kueue-1: 403 denied by a webhook"
    ]
    api.request = real  # type: ignore[method-assign]
    await ctl.reconcile_all()  # the resync tries again
    assert list(api.workloads) == ["k-kueue-1"]
