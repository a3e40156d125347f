"""What the TrainingRun controller exports after a pass, from its cache (no apiserver): cluster
GPU capacity as the allocator sees it, `accordion_pod_info` following the run's pods, and the
zero-valued preemption counters of every namespace with runs, and the failed pods it replaces
by the trainer's exit-code reason."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from trainingrun_factory import make_body, make_run

from accordion_operator.config import Config
from accordion_operator.core.objects import Resource
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller
from accordion_operator.trainingrun.decide import Plan
from accordion_operator.trainingrun.export import RunExport


def node(name: str, gpus: int, *, cordoned: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod(name: str, run: str, role: str, rv: str = "5") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "resourceVersion": rv,
            "labels": {
                "accordion.dev/run": run,
                "accordion.dev/role": role,
                "app.kubernetes.io/managed-by": "accordion-operator",
            },
        },
        "spec": {"nodeName": "n1", "containers": [{"resources": {"requests": {}}}]},
        "status": {"phase": "Running"},
    }


def _info(m: OperatorMetrics) -> list[dict[str, str]]:
    return sorted(
        (
            s.labels
            for family in m.registry.collect()
            for s in family.samples
            if s.name == "accordion_pod_info"
        ),
        key=lambda labels: labels["pod"],
    )


def export(ctl: Controller) -> RunExport:
    assert ctl.export is not None
    return ctl.export


def test_pass_exports_capacity_pod_info_and_namespace_counters() -> None:
    cache = ClusterCache(Config())
    m = OperatorMetrics()
    ctl = Controller(Config(), None, cache, metrics=m)  # type: ignore[arg-type]  # no I/O here
    cache.apply("node", "ADDED", node("n1", 8))
    cache.apply("node", "ADDED", node("n2", 4, cordoned=True))  # not schedulable: not counted
    trial = make_body(
        metadata={"name": "sweep-000", "labels": {"accordion.dev/experiment": "sweep"}}
    )
    cache.apply("run", "ADDED", make_body())
    cache.apply("run", "ADDED", trial)
    cache.apply("pod", "ADDED", pod("mnist-worker-0", "mnist", "worker"))
    cache.apply("pod", "ADDED", pod("mnist-launcher", "mnist", "launcher"))
    cache.apply("pod", "ADDED", pod("sweep-000-worker-0", "sweep-000", "worker"))
    export(ctl).after_pass(ctl.cache, 0.01)
    text = generate_latest(m.registry).decode()
    assert "accordion_cluster_gpus_capacity 8.0" in text
    assert 'accordion_preemptions_total{namespace="team-a",reason="HigherPriority"} 0.0' in text
    assert _info(m) == [
        {"namespace": "team-a", "pod": "mnist-launcher", "run": "mnist", "experiment": "",
         "role": "launcher"},
        {"namespace": "team-a", "pod": "mnist-worker-0", "run": "mnist", "experiment": "",
         "role": "worker"},
        {"namespace": "team-a", "pod": "sweep-000-worker-0", "run": "sweep-000",
         "experiment": "sweep", "role": "worker"},
    ]  # fmt: skip
    # a pod goes, a node is uncordoned: the next pass follows
    cache.apply("pod", "DELETED", pod("mnist-worker-0", "mnist", "worker", rv="6"))
    cache.apply("node", "MODIFIED", node("n2", 4))
    export(ctl).after_pass(ctl.cache, 0.01)
    assert [i["pod"] for i in _info(m)] == ["mnist-launcher", "sweep-000-worker-0"]
    assert "accordion_cluster_gpus_capacity 12.0" in generate_latest(m.registry).decode()


class FakeKube:
    """Answers the writes of `_execute`; a DELETE removes the pod from the cache at once, as the
    watch's DELETED event may before the DELETE's own response arrives."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 201, obj

    async def delete_pod(self, ns: str, name: str) -> tuple[int, dict[str, Any]]:
        self.cache.apply("pod", "DELETED", {"metadata": {"name": name, "namespace": ns}})
        return 200, {"kind": "Status"}

    async def patch_status(
        self, _resource: Resource, ns: str, name: str, patch: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        return 200, make_body(status=patch)

    async def event(self, *_: Any) -> None:
        return None


async def test_failed_pods_the_plan_replaces_are_counted_by_exit_reason() -> None:
    cache = ClusterCache(Config())
    m = OperatorMetrics()
    ctl = Controller(Config(), FakeKube(cache), cache, metrics=m)  # type: ignore[arg-type]
    failed = pod("mnist-worker-1", "mnist", "worker")
    failed["status"] = {
        "phase": "Failed",
        "containerStatuses": [{"state": {"terminated": {"exitCode": 10}}}],  # DataUnreachable
    }
    launcher = pod("mnist-launcher", "mnist", "launcher")
    launcher["status"] = {
        "phase": "Failed",
        "containerStatuses": [{"state": {"terminated": {"exitCode": 139}}}],  # no contract code
    }
    for body in (failed, launcher, pod("mnist-worker-0", "mnist", "worker")):
        cache.apply("pod", "ADDED", body)
    plan = Plan(
        delete_pods=["mnist-worker-1", "mnist-launcher", "mnist-worker-0"],  # 0: a scale-down
        status_patch={"phase": "Running", "desiredWorkers": 1},
        events=[
            ("Warning", "WorkerReplaced", "worker mnist-worker-1 ended"),
            ("Warning", "LauncherRestart", "restart 1/6"),
        ],
    )
    await ctl._execute(make_run(), plan)
    failures = {
        (s.labels["role"], s.labels["reason"]): s.value
        for family in m.registry.collect()
        for s in family.samples
        if s.name == "accordion_run_pod_failures_total"
    }
    assert failures == {("worker", "DataUnreachable"): 1.0, ("launcher", "Other"): 1.0}


def _rescales(m: OperatorMetrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["direction"], s.labels["reason"]): s.value
        for family in m.registry.collect()
        for s in family.samples
        if s.name == "accordion_rescale_events_total"
    }


def test_a_shrink_the_user_asked_for_is_not_counted_as_preemption() -> None:
    m = OperatorMetrics()
    ctl = Controller(Config(), None, ClusterCache(Config()), metrics=m)  # type: ignore[arg-type]
    running = {"phase": "Running", "desiredWorkers": 3}
    # `kubectl scale tr mnist --replicas 1`: the grant follows the request
    asked = make_run(spec={"workers": {"min": 1, "max": 3, "replicas": 1}}, status=running)
    export(ctl).after_write(asked, Plan(), {"phase": "Running", "desiredWorkers": 1}, [])
    # the grant drops below what the run asks for: GPUs went to others
    squeezed = make_run(spec={"workers": {"min": 1, "max": 3}}, status=running)
    export(ctl).after_write(squeezed, Plan(), {"phase": "Running", "desiredWorkers": 2}, [])
    assert _rescales(m) == {("down", "SpecChanged"): 1.0, ("down", "Preempted"): 1.0}
