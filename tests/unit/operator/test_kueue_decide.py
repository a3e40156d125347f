"""Kueue admission of labelled TrainingRuns (trainingrun/kueue.py): the Workloads a run asks
for, what Kueue's answers make of its grant, and the flavors its pods take. Pure: Workloads
as the apiserver returns them, no cluster (tests/cluster/test_kueue_admission.py has the real
Kueue)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from trainingrun_factory import make_run

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.config import Config
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.kueue import (
    ANNOTATION_REPLACES,
    REASON_KUEUE_ADMITTED,
    REASON_KUEUE_PENDING,
    REASON_KUEUE_UNAVAILABLE,
    Flavor,
    KueueDecision,
    KueueStore,
    Slice,
    WorkloadState,
    build_workload,
    decide_workloads,
    flavor_of,
    place_pod,
    workload_state,
)

UID = "5f0c3a9e-8d21-4b7e-9a43-2c1d0e6f7b8a"  # trainingrun_factory's run
CFG = Config()


def run(lo: int = 1, hi: int = 4, replicas: int | None = None, **status: Any) -> TrainingRun:
    workers: dict[str, Any] = {"min": lo, "max": hi, "gpusPerWorker": 2}
    if replicas is not None:
        workers["replicas"] = replicas
    return make_run(
        metadata={"labels": {"kueue.x-k8s.io/queue-name": "team-a-queue"}},
        spec={"workers": workers, "nodeSelector": {"pool": "gpu"}},
        status=status,
    )


def wl(
    name: str,
    workers: int,
    *,
    created: str = "2026-01-01T00:00:00Z",
    admitted: bool = False,
    flavors: dict[str, str] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    replaces: str | None = None,
    deleting: bool = False,
    queue: str = "team-a-queue",
) -> dict[str, Any]:
    """A Workload of the run `mnist` as the apiserver returns it."""
    conds = list(conditions or [])
    status: dict[str, Any] = {"conditions": conds}
    if admitted:
        conds += [
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
            {"type": "Admitted", "status": "True", "reason": "Admitted"},
        ]
        assigned = flavors or {"nvidia.com/gpu": "default"}
        status["admission"] = {
            "clusterQueue": "cq",
            "podSetAssignments": [
                {"name": "launcher", "flavors": {"cpu": "default"}, "count": 1},
                {"name": "workers", "flavors": assigned, "count": workers},
            ],
        }
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "team-a",
        "creationTimestamp": created,
        "labels": {"accordion.dev/run": "mnist"},
        "ownerReferences": [{"controller": True, "uid": UID, "kind": "TrainingRun"}],
        "annotations": {ANNOTATION_REPLACES: f"team-a/{replaces}"} if replaces else {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    return {
        "metadata": meta,
        "spec": {
            "queueName": queue,
            "podSets": [{"name": "launcher", "count": 1}, {"name": "workers", "count": workers}],
        },
        "status": status,
    }


def decide(
    r: TrainingRun,
    *bodies: dict[str, Any],
    flavors: dict[str, Flavor] | None = None,
    served: bool = True,
    active: bool = True,
) -> KueueDecision:
    store = KueueStore()
    for b in bodies:
        store.apply("workload", b, deleted=False)
    return decide_workloads(
        r,
        store.of_run("team-a", "mnist", UID),
        flavors or {},
        served=served,
        active=active,
    )


def test_a_new_run_asks_kueue_for_its_minimum_and_waits() -> None:
    d = decide(run(lo=2, hi=4))
    assert d.create == (Slice("mnist-kueue-2", 2),)
    assert d.delete == ()
    assert (d.grant.workers, d.grant.reason) == (0, REASON_KUEUE_PENDING)
    assert "mnist-kueue-2" in d.grant.message
    assert "team-a-queue" in d.grant.message


def test_a_pending_workload_is_kept_and_its_kueue_message_shown() -> None:
    pending = {
        "type": "QuotaReserved",
        "status": "False",
        "reason": "Pending",
        "message": "couldn't assign flavors to pod set workers: insufficient unused quota",
    }
    d = decide(run(lo=2), wl("mnist-kueue-2", 2, conditions=[pending]))
    assert d.create == ()
    assert d.delete == ()
    assert d.grant.workers == 0
    assert d.grant.message.endswith(": couldn't assign flavors to pod set workers: "
                                    "insufficient unused quota")  # fmt: skip


def test_an_admitted_minimum_grants_it_and_asks_for_the_rest_as_a_slice() -> None:
    d = decide(run(lo=1, hi=4), wl("mnist-kueue-1", 1, admitted=True))
    assert (d.grant.workers, d.grant.reason) == (1, REASON_KUEUE_ADMITTED)
    assert d.create == (Slice("mnist-kueue-4", 4, replaces="mnist-kueue-1"),)
    assert "ClusterQueue cq" in d.grant.message
    assert "2 GPUs" in d.grant.message
    assert "a slice of 4 workers waits for Kueue" in d.grant.message


def test_growth_is_granted_only_once_the_slice_is_admitted_then_the_old_one_goes() -> None:
    old = wl("mnist-kueue-1", 1, admitted=True)
    new = wl("mnist-kueue-4", 4, created="2026-01-01T00:01:00Z", replaces="mnist-kueue-1")
    waiting = decide(run(), old, new)
    assert waiting.grant.workers == 1
    assert waiting.create == ()
    assert waiting.delete == ()
    # Kueue admits the slice (with its feature gate it finishes the old one in the same step)
    finished = {"type": "Finished", "status": "True", "reason": "WorkloadSliceReplaced"}
    old_done = wl("mnist-kueue-1", 1, admitted=True, conditions=[finished])
    grown = wl("mnist-kueue-4", 4, created="2026-01-01T00:01:00Z", admitted=True,
               replaces="mnist-kueue-1")  # fmt: skip
    for before in (old, old_done):  # without the gate the old one is still admitted
        d = decide(run(), before, grown)
        assert (d.grant.workers, d.grant.reason) == (4, REASON_KUEUE_ADMITTED)
        assert d.delete == ("mnist-kueue-1",)
        assert d.create == ()


def test_the_admitted_slice_is_the_one_no_other_replaces_whatever_the_clock_says() -> None:
    # both admitted within one second (Kueue without the feature gate), listed in name order
    old = wl("mnist-kueue-4", 4, admitted=True)
    new = wl("mnist-kueue-2", 2, admitted=True, replaces="mnist-kueue-4")
    d = decide(run(replicas=2), old, new)
    assert d.grant.workers == 2
    assert d.delete == ("mnist-kueue-4",)


def test_kubectl_scale_down_asks_for_a_smaller_slice_and_drops_a_stale_pending_one() -> None:
    current = wl("mnist-kueue-4", 4, admitted=True)
    stale = wl("mnist-kueue-3", 3, created="2026-01-01T00:01:00Z", replaces="mnist-kueue-4")
    d = decide(run(replicas=2), current, stale)
    assert d.grant.workers == 4  # until Kueue admits the smaller slice
    assert d.create == (Slice("mnist-kueue-2", 2, replaces="mnist-kueue-4"),)
    assert d.delete == ("mnist-kueue-3",)


def test_an_eviction_releases_everything_and_says_why_until_readmitted() -> None:
    evicted = {
        "type": "Evicted",
        "status": "True",
        "reason": "Preempted",
        "message": "Preempted to accommodate a workload (UID: x) due to prioritization",
    }
    d = decide(run(), wl("mnist-kueue-4", 4, admitted=True, conditions=[evicted]))
    assert d.grant.workers == 0
    assert d.grant.reason == "EvictedByKueuePreempted"
    assert "resumes from its last checkpoint" in d.grant.message
    assert d.delete == ("mnist-kueue-4",)
    assert d.create == ()
    # next pass: the Workload is gone, the run's status says it was evicted: a new minimum
    # queues and the reason stays until Kueue admits it
    cond = {
        "type": "Admitted",
        "status": "False",
        "reason": d.grant.reason,
        "message": d.grant.message,
        "lastTransitionTime": "2026-01-01T00:05:00Z",
    }
    again = decide(run(conditions=[cond], phase="Queued"))
    assert again.create == (Slice("mnist-kueue-1", 1),)
    assert (again.grant.reason, again.grant.message) == (d.grant.reason, d.grant.message)
    readmitted = decide(
        run(conditions=[cond], phase="Queued"), wl("mnist-kueue-1", 1, admitted=True)
    )
    assert readmitted.grant.reason == REASON_KUEUE_ADMITTED


def test_a_kueue_reason_that_is_no_condition_reason_is_not_copied() -> None:
    evicted = {"type": "Evicted", "status": "True", "reason": "odd reason!", "message": "m"}
    d = decide(run(), wl("mnist-kueue-1", 1, admitted=True, conditions=[evicted]))
    assert d.grant.reason == "EvictedByKueueEvicted"
    assert "(odd reason!: m)" in d.grant.message


def test_an_inactive_run_deletes_its_workloads_and_being_deleted_ones_are_left_alone() -> None:
    bodies = (
        wl("mnist-kueue-1", 1, admitted=True),
        wl("mnist-kueue-4", 4, replaces="mnist-kueue-1"),
        wl("mnist-kueue-2", 2, deleting=True),
    )
    for r, active in ((run(), False), (run(phase="Succeeded"), True)):
        d = decide(r, *bodies, active=active)
        assert sorted(d.delete) == ["mnist-kueue-1", "mnist-kueue-4"]
        assert d.create == ()


def test_a_changed_queue_label_queues_the_run_again_in_the_new_queue() -> None:
    d = decide(run(), wl("mnist-kueue-1", 1, admitted=True, queue="old-queue"))
    assert d.grant.workers == 0
    assert d.delete == ("mnist-kueue-1",)
    assert d.create == ()  # its namesake goes first; the next pass creates it in the new queue
    assert decide(run()).create == (Slice("mnist-kueue-1", 1),)


def test_without_kueue_the_run_is_told_so() -> None:
    d = decide(run(), served=False)
    assert (d.grant.workers, d.grant.reason) == (0, REASON_KUEUE_UNAVAILABLE)
    assert "kueue.x-k8s.io/queue-name=team-a-queue" in d.grant.message
    assert d.create == ()
    assert d.delete == ()


def test_a_bad_queue_name_is_refused_before_any_workload() -> None:
    r = make_run(metadata={"labels": {"kueue.x-k8s.io/queue-name": "Bad_Queue"}})
    d = decide_workloads(r, (), {}, served=True, active=True)
    assert d.grant.reason == "InvalidQueueName"
    assert d.create == ()


def test_workloads_of_another_owner_are_not_the_runs() -> None:
    other = wl("mnist-kueue-1", 1, admitted=True)
    other["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    d = decide(run(), other)
    assert d.grant.workers == 0
    assert d.create == (Slice("mnist-kueue-1", 1),)


def test_the_workload_carries_the_pods_requests_placement_and_priority() -> None:
    r = run(lo=2)
    body = build_workload(r, CFG, Slice("mnist-kueue-4", 4, "mnist-kueue-2"), priority=1000)
    assert body["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert body["metadata"]["ownerReferences"][0]["uid"] == UID
    assert body["metadata"]["annotations"][ANNOTATION_REPLACES] == "team-a/mnist-kueue-2"
    assert body["spec"]["queueName"] == "team-a-queue"
    assert "priorityClassRef" not in body["spec"]  # the run names no class
    launcher, workers = body["spec"]["podSets"]
    assert (launcher["name"], launcher["count"]) == ("launcher", 1)
    assert (workers["name"], workers["count"]) == ("workers", 4)
    pod = builders.build_worker_pod(r, 0, CFG)
    assert (
        workers["template"]["spec"]["containers"][0]["resources"]
        == (pod["spec"]["containers"][0]["resources"])
    )
    assert (
        workers["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
        == "2"
    )
    assert workers["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert workers["template"]["spec"]["tolerations"] == pod["spec"]["tolerations"]
    launcher_pod = builders.build_launcher_pod(r, CFG)
    assert (
        launcher["template"]["spec"]["containers"][0]["resources"]
        == (launcher_pod["spec"]["containers"][0]["resources"])
    )
    classed = make_run(
        metadata={"labels": {"kueue.x-k8s.io/queue-name": "q"}},
        spec={"priorityClassName": "high"},
    )
    spec = build_workload(classed, CFG, Slice("mnist-kueue-1", 1), priority=1000)["spec"]
    assert spec["priorityClassRef"] == {
        "group": "scheduling.k8s.io",
        "kind": "PriorityClass",
        "name": "high",
    }
    assert spec["priority"] == 1000


def test_pods_take_their_pod_sets_flavor_labels_and_tolerations() -> None:
    flavor = flavor_of(
        {
            "metadata": {"name": "a100"},
            "spec": {
                "nodeLabels": {"gpu": "a100"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml",
                     "effect": "NoSchedule", "tolerationSeconds": 5},
                ],
            },
        }
    )  # fmt: skip
    d = decide(
        run(),
        wl("mnist-kueue-1", 1, admitted=True, flavors={"nvidia.com/gpu": "a100", "cpu": "cpu"}),
        flavors={"a100": flavor, "cpu": Flavor("cpu", (("cpu-pool", "yes"),))},
    )
    r = run()
    worker = place_pod(builders.build_worker_pod(r, 0, CFG), d)
    assert worker["spec"]["nodeSelector"] == {"pool": "gpu", "gpu": "a100", "cpu-pool": "yes"}
    assert worker["spec"]["tolerations"][-1] == {
        "effect": "NoSchedule",
        "key": "dedicated",
        "operator": "Equal",
        "value": "ml",
    }
    # the launcher's pod set got only the `default` flavor, which the cache does not know
    launcher = place_pod(builders.build_launcher_pod(r, CFG), d)
    assert launcher == builders.build_launcher_pod(r, CFG)


def test_workload_state_reads_admission_eviction_and_finish() -> None:
    s = workload_state(
        wl(
            "mnist-kueue-4",
            4,
            admitted=True,
            replaces="mnist-kueue-1",
            conditions=[{"type": "Finished", "status": "True", "reason": "WorkloadSliceReplaced"}],
        )
    )
    assert s == WorkloadState(
        name="mnist-kueue-4",
        run="mnist",
        owner_uid=UID,
        workers=4,
        created=s.created,
        admitted=True,
        finished=True,
        replaces="mnist-kueue-1",
        queue="team-a-queue",
        cluster_queue="cq",
        flavors=(("launcher", ("default",)), ("workers", ("default",))),
    )
    # admitted means Admitted=True *and* an admission: quota reserved alone starts nothing
    reserved = wl("x", 1)
    reserved["status"]["conditions"] = [{"type": "QuotaReserved", "status": "True"}]
    assert not workload_state(reserved).admitted
    assert workload_state({}).workers == 0  # an empty object parses


@st.composite
def observed(draw: st.DrawFn) -> tuple[TrainingRun, list[dict[str, Any]]]:
    lo = draw(st.integers(1, 4))
    hi = draw(st.integers(lo, 8))
    r = run(lo=lo, hi=hi, replicas=draw(st.integers(lo, hi)))
    bodies = []
    for i, count in enumerate(draw(st.lists(st.integers(1, 8), max_size=4, unique=True))):
        evicted = draw(st.booleans()) and draw(st.booleans())
        conds = [{"type": "Evicted", "status": "True", "reason": "Preempted"}] if evicted else []
        bodies.append(
            wl(
                f"mnist-kueue-{count}",
                count,
                created=f"2026-01-01T00:0{i}:00Z",
                admitted=draw(st.booleans()),
                conditions=conds,
            )
        )
    return r, bodies


@given(observed())
def test_pods_never_outgrow_what_kueue_admitted(
    case: tuple[TrainingRun, list[dict[str, Any]]],
) -> None:
    """Whatever Kueue's Workloads say: the grant is the worker count of an admitted, unevicted
    Workload of the run (or 0), at most one Workload is created per pass, nothing created is
    also deleted, and a run never holds more than two live slices."""
    r, bodies = case
    d = decide(r, *bodies)
    states = [workload_state(b) for b in bodies]
    admitted = {s.workers for s in states if s.admitted and s.evicted is None}
    if any(s.evicted is not None for s in states):
        assert d.grant.workers == 0
    else:
        assert d.grant.workers == 0 or d.grant.workers in admitted
    assert len(d.create) <= 1
    assert not {c.name for c in d.create} & set(d.delete)
    live_after = {s.name for s in states} - set(d.delete) | {c.name for c in d.create}
    assert len(live_after) <= 2
