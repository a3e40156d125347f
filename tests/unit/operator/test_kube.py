"""The controller's cache: watch events and LISTs in, allocator inputs out (no apiserver)."""

from __future__ import annotations

from typing import Any

import pytest
from trainingrun_factory import make_body

from accordion_operator.config import Config
from accordion_operator.core.kube import relist_delay
from accordion_operator.trainingrun.allocator import PodUse, Taint
from accordion_operator.trainingrun.cache import ClusterCache, node_from


def pod(
    name: str,
    ns: str = "team-a",
    *,
    run: str | None = None,
    gpus: int = 1,
    node: str | None = "n1",
    phase: str = "Running",
    rv: str = "5",
    priority_class: str | None = None,
) -> dict[str, Any]:
    labels = {}
    if run:
        labels = {
            "accordion.dev/run": run,
            "accordion.dev/role": "worker",
            "app.kubernetes.io/managed-by": "accordion-operator",
            "accordion.dev/worker-index": name.rsplit("-", 1)[-1],
        }
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": rv},
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}],
            **({"priorityClassName": priority_class} if priority_class else {}),
        },
        "status": {"phase": phase},
    }


def test_pods_feed_gpu_use_and_run_children() -> None:
    cache = ClusterCache(Config())
    cache.apply("pod", "ADDED", pod("mnist-worker-0", run="mnist"))
    cache.apply("pod", "ADDED", pod("other", gpus=2))
    cache.apply("pod", "ADDED", pod("pending", node=None))
    cache.apply("pod", "ADDED", pod("done", phase="Succeeded"))
    cache.apply("pod", "ADDED", pod("high", gpus=3, priority_class="high"))
    # a pod not bound yet takes no node's GPUs but counts for its namespace's quotas (node "")
    assert sorted(cache.gpu_pods.values(), key=lambda p: (p.gpus, p.node)) == [
        PodUse("", 1, None, "", "team-a"),
        PodUse("n1", 1, "team-a/mnist", "", "team-a"),
        PodUse("n1", 2, None, "", "team-a"),
        PodUse("n1", 3, None, "", "team-a", "high"),
    ]
    assert [p.name for p in cache.pods_of("team-a", "mnist")] == ["mnist-worker-0"]
    assert cache.dirty.is_set()
    cache.apply("pod", "DELETED", pod("mnist-worker-0", run="mnist"))
    cache.apply("pod", "DELETED", pod("pending", node=None))
    cache.apply("pod", "DELETED", pod("high"))
    assert cache.pods_of("team-a", "mnist") == []
    assert list(cache.gpu_pods.values()) == [PodUse("n1", 2, None, "", "team-a")]


def test_older_copies_do_not_overwrite_newer_ones() -> None:
    cache = ClusterCache(Config())
    cache.apply("pod", "MODIFIED", pod("mnist-worker-0", run="mnist", phase="Failed", rv="9"))
    cache.apply("pod", "MODIFIED", pod("mnist-worker-0", run="mnist", phase="Running", rv="7"))
    assert cache.pods_of("team-a", "mnist")[0].phase == "Failed"
    body = make_body(metadata={"resourceVersion": "20"})
    cache.apply("run", "MODIFIED", body)
    cache.apply(
        "run",
        "MODIFIED",
        make_body(metadata={"resourceVersion": "3"}, spec={"priorityClassName": "old"}),
    )
    assert cache.runs[("team-a", "mnist")].model().spec.priority_class_name is None


def test_a_list_forgets_what_is_gone_in_its_namespace_only() -> None:
    cache = ClusterCache(Config())
    cache.apply("pod", "ADDED", pod("a-worker-0", "ns1", run="a"))
    cache.apply("pod", "ADDED", pod("b-worker-0", "ns2", run="b"))
    cache.replace_all("pod", [], namespace="ns1")
    assert cache.pods_of("ns1", "a") == []
    assert len(cache.pods_of("ns2", "b")) == 1
    cache.replace_all("pod", [])
    assert cache.gpu_pods == {}


def test_unparsable_runs_are_kept_with_the_reason() -> None:
    cache = ClusterCache(Config())
    cache.apply("run", "ADDED", make_body(spec={"hyperparameters": {"x": [1, 2]}}))
    cached = cache.runs[("team-a", "mnist")]
    assert cached.invalid is not None
    assert cached.invalid[0] == "InvalidHyperparameters"
    assert not cached.wants_gpus
    # the object is kept to report on it
    assert cached.body()["spec"]["hyperparameters"] == {"x": [1, 2]}


def test_node_from() -> None:
    body = {
        "metadata": {"name": "gpu-1", "labels": {"type": "kwok"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    node = node_from(body, "nvidia.com/gpu")
    assert (node.name, node.gpus, node.unschedulable) == ("gpu-1", 8, False)
    assert node.taints == (Taint("nvidia.com/gpu", "present", "NoSchedule"),)
    cordoned = {**body, "spec": {**body["spec"], "unschedulable": True}}
    assert node_from(cordoned, "nvidia.com/gpu").unschedulable
    not_ready = {**body, "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": []}}
    assert node_from(not_ready, "nvidia.com/gpu").unschedulable


def test_our_delete_response_after_the_watch_deleted_event_does_not_resurrect_the_pod() -> None:
    """Seen in the demo: a dead launcher went at once, the watch's DELETED arrived before the
    response to the operator's DELETE, and the stale copy kept the run waiting forever."""
    cache = ClusterCache(Config())
    cache.apply("pod", "ADDED", pod("mnist-worker-0", run="mnist", phase="Failed", rv="8"))
    cache.apply("pod", "DELETED", pod("mnist-worker-0", run="mnist", phase="Failed", rv="10"))
    cache.apply(
        "pod", "MODIFIED", pod("mnist-worker-0", run="mnist", phase="Failed", rv="9"), wake=False
    )
    assert cache.pods_of("team-a", "mnist") == []
    # a new pod of the same name is taken
    cache.apply("pod", "ADDED", pod("mnist-worker-0", run="mnist", rv="12"))
    assert [p.phase for p in cache.pods_of("team-a", "mnist")] == ["Running"]


def test_cached_runs_leave_out_the_epoch_history_and_unread_metadata() -> None:
    """The run controller never reads `status.training.history`; it is most of a run's memory.
    kubectl's last-applied-configuration and managedFields repeat the spec."""
    history = [{"epoch": e, "metrics": {"val_accuracy": 0.9}} for e in range(1, 51)]
    body = make_body(
        metadata={
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}" * 100},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        status={
            "phase": "Running",
            "training": {"epoch": 50, "rank0Pod": "mnist-worker-0", "history": history},
        },
    )
    cache = ClusterCache(Config())
    cache.apply("run", "ADDED", body)
    (cached,) = cache.runs.values()
    assert len(cached.raw) < 1000
    assert b"last-applied" not in cached.raw
    assert b"managedFields" not in cached.raw
    training = cached.model().status.training
    assert training is not None
    assert training.history == []
    assert (training.epoch, training.rank0_pod) == (50, "mnist-worker-0")
    assert len(body["status"]["training"]["history"]) == 50  # the event's body is not changed


def test_cached_run_summary_agrees_with_the_model() -> None:
    """A pass over settled runs reads only the summary: it must say what the model says."""
    from accordion_operator.trainingrun.cache import CachedRun
    from accordion_operator.trainingrun.observe import run_request, wants_gpus

    data = {"endpoint": "minio:9000", "bucket": "data", "credentialsSecret": {"name": "data-s3"}}
    cases = [
        make_body(),
        make_body(spec={"suspend": True, "priorityClassName": "high", "data": data}),
        make_body(status={"phase": "Succeeded", "startTime": "2026-01-01T00:01:00Z"}),
        make_body(metadata={"deletionTimestamp": "2026-01-01T00:02:00Z", "labels": {"a": "b"}}),
    ]
    for body in cases:
        cached = CachedRun.of(body)
        run = cached.model()
        assert cached.invalid is None
        assert cached.key == run.key
        assert cached.wants_gpus == wants_gpus(run)
        assert cached.started == (run.status.start_time is not None)
        assert (cached.priority_class, cached.created, cached.uid) == (
            run.spec.priority_class_name,
            run.metadata.creation_timestamp,
            run.metadata.uid,
        )
        assert cached.labels == run.metadata.labels
        assert cached.request == run_request(run)
        assert not cached.decided
    assert CachedRun.of(cases[1]).secret_names == ("data-s3", "s3")
    assert [CachedRun.of(b).wants_gpus for b in cases] == [True, False, False, False]
    acted_on = make_body(metadata={"generation": 3}, status={"observedGeneration": 3})
    assert CachedRun.of(acted_on).decided
    rescaled = make_body(metadata={"generation": 4}, status={"observedGeneration": 3})
    assert not CachedRun.of(rescaled).decided


def test_a_run_no_model_can_read_leaves_the_watch_and_other_runs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16: any exception reading one object (not only what the models reject) is that
    object's problem; the watch goes on and the other runs stay cached."""
    from accordion_operator.trainingrun.cache import CachedRun

    cache = ClusterCache(Config())
    cache.apply("run", "ADDED", make_body(metadata={"name": "good"}))
    real = CachedRun.of

    def explode(body: Any) -> CachedRun:
        if body["metadata"]["name"] == "bad":
            raise AttributeError("a shape nobody foresaw")
        return real(body)

    monkeypatch.setattr(CachedRun, "of", explode)
    cache.apply("run", "ADDED", make_body(metadata={"name": "bad"}))
    cache.apply("run", "ADDED", make_body(metadata={"name": "later"}))
    assert sorted(name for _, name in cache.runs) == ["good", "later"]


def test_failed_lists_back_off_from_one_second_to_thirty() -> None:
    assert [relist_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
