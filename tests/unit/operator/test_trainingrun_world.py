"""A worker whose training process left the Horovod world while its pod stays Ready (issue 16):
the trainer reports the world (`status.training.worldPods`, confirmed at `worldTime`) and the
operator replaces a Ready worker missing from it (`phases.left_world`), at most one per grace
period per run, whatever the launcher (user code) writes into that report."""

from __future__ import annotations

from typing import Any

import pytest
from merge_patch import merge
from trainingrun_factory import launcher, make_run, worker

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.config import Config
from accordion_operator.core.timefmt import to_rfc3339
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.decide import Plan, decide_run
from accordion_operator.trainingrun.observe import Children, PodState, pod_state

GRACE = 60.0
CFG = Config(world_grace_seconds=GRACE)
NOW = 1_800_000_000.0
#: when the pods were created and turned Ready: long before NOW
EARLY = NOW - 1000


def pods(**w1: Any) -> list[PodState]:
    """A launcher and two workers, created and Ready long ago; `w1` changes worker 1."""
    return [
        launcher(created=EARLY - 10),
        worker(0, created=EARLY, ready_since=EARLY + 5),
        worker(1, **{"created": EARLY, "ready_since": EARLY + 5, **w1}),
    ]


def decide(run: TrainingRun, observed: list[PodState], now: float = NOW) -> Plan:
    return decide_run(
        run,
        Children(observed, auth_ready=True),
        Grant(2, "MinimumWorkersFit", "granted"),
        invalid=None,
        cfg=CFG,
        now=now,
    )


def running(observed: list[PodState], **training: Any) -> TrainingRun:
    """The run `mnist` Running with two workers, `training` as the launcher reported it."""
    run = make_run()
    plan = decide(run, observed)
    body = run.model_dump(by_alias=True, exclude_none=True)
    body["status"] = merge(body.get("status") or {}, plan.status_patch or {})
    assert body["status"]["phase"] == "Running"
    body["status"]["training"] = {"epoch": 2, "rank0Pod": "mnist-worker-0", **training}
    return TrainingRun.model_validate(body)


def world(*names: str, at: float = NOW - 5) -> dict[str, Any]:
    return {"worldPods": list(names), "worldTime": to_rfc3339(at)}


def left(plan: Plan) -> list[str]:
    return [msg for _, reason, msg in plan.events if reason == "WorkerLeftWorld"]


def test_a_ready_worker_missing_from_the_world_is_replaced() -> None:
    observed = pods()
    plan = decide(running(observed, **world("mnist-worker-0")), observed)
    assert plan.delete_pods == ["mnist-worker-1"]
    [message] = left(plan)
    assert "mnist-worker-1" in message
    assert "Horovod world of 1 pods" in message
    assert plan.create == []
    # next pass: worker 1 is terminating, scaling creates its replacement at a new index (a new
    # pod, a new IP: Horovod's blacklist holds the old pod's address for good)
    going = pods(deleting=True)
    after = decide(running(going, **world("mnist-worker-0")), going)
    assert [o["metadata"]["name"] for o in after.create] == ["mnist-worker-2"]
    assert after.delete_pods == []
    assert left(after) == []


def test_the_world_as_reported_keeps_every_worker() -> None:
    observed = pods()
    plan = decide(running(observed, **world("mnist-worker-0", "mnist-worker-1")), observed)
    assert plan.delete_pods == []
    assert left(plan) == []


@pytest.mark.parametrize(
    ("case", "training", "w1"),
    [
        ("no world report yet", {}, {}),
        ("a list without its time", {"worldPods": ["mnist-worker-0"]}, {}),
        ("an empty list", world(), {}),
        # turned Ready less than the grace period before the report: it may still be joining
        ("a worker joining", world("mnist-worker-0"), {"ready_since": NOW - 5 - GRACE + 1}),
        # the report of the launcher before this one (restarted): another world
        ("a previous launcher's report", world("mnist-worker-0", at=EARLY - 20), {}),
    ],
)
def test_no_replacement_without_a_current_report_that_leaves_the_worker_out(
    case: str, training: dict[str, Any], w1: dict[str, Any]
) -> None:
    observed = pods(**w1)
    plan = decide(running(observed, **training), observed)
    assert plan.delete_pods == [], case


def test_no_replacement_beyond_the_launchers_max_workers() -> None:
    """spec.workers.max raised after the launcher started: horovodrun (--max-np, the launcher's
    ACCORDION_MAX_WORKERS) admits no more, and the extra worker waits outside the world."""
    observed = [launcher(created=EARLY - 10, max_workers=1), *pods()[1:]]
    plan = decide(running(observed, **world("mnist-worker-0")), observed)
    assert plan.delete_pods == []
    built = builders.build_launcher_pod(make_run(spec={"workers": {"max": 3}}), CFG)
    built["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_state(built).max_workers == 3
    assert pod_state(builders.build_worker_pod(make_run(), 0, CFG)).max_workers is None


def test_no_replacement_unless_the_run_and_its_launcher_are_running() -> None:
    observed = pods()
    run = running(observed, **world("mnist-worker-0"))
    # a launcher that failed and waits for its restart
    failed = [
        launcher(phase="Failed", exit_code=1, finished_at=NOW - 1, created=EARLY),
        *observed[1:],
    ]
    assert left(decide(run, failed)) == []
    # a run whose Running condition is not True (a worker still starting, say)
    body = run.model_dump(by_alias=True, exclude_none=True)
    for c in body["status"]["conditions"]:
        if c["type"] == "Running":
            c["status"] = "False"
    assert decide(TrainingRun.model_validate(body), observed).delete_pods == []
    # off with a zero grace period
    off = decide_run(
        run,
        Children(observed, auth_ready=True),
        Grant(2, "MinimumWorkersFit", "granted"),
        invalid=None,
        cfg=Config(world_grace_seconds=0),
        now=NOW,
    )
    assert off.delete_pods == []


def test_a_forged_report_deletes_at_most_one_worker_of_this_run_per_grace_period() -> None:
    """status.training is the launcher's to write (user code). A forged world that names no
    worker, at a time in the future, deletes one worker; nothing more while that one is going,
    its replacement is missing or starting, or younger than the grace period, and the run's
    other workers only one grace period later. Only this run's own pods are ever named."""
    forged = world("nobody", at=NOW + 10**6)
    observed = pods()
    first = decide(running(observed, **forged), observed)
    assert first.delete_pods == ["mnist-worker-0"]
    # worker 0 terminating: nothing else is deleted, its replacement is created
    going = [observed[0], worker(0, created=EARLY, ready_since=EARLY, deleting=True), observed[2]]
    plan = decide(running(going, **forged), going)
    assert plan.delete_pods == []
    assert len(plan.create) == 1
    # worker 0 gone, the replacement not seen yet: scaling creates it, nothing is deleted
    short = [observed[0], observed[2]]
    plan = decide(running(short, **forged), short, now=NOW + 1)
    assert plan.delete_pods == []
    # the replacement created at NOW + 1 and already Ready: worker 1 waits for the grace period
    new = [*short, worker(2, created=NOW + 1, ready_since=NOW + 2)]
    plan = decide(running(new, **forged), new, now=NOW + 3)
    assert plan.delete_pods == []
    assert plan.requeue_after == pytest.approx(GRACE - 2)
    # a grace period after the replacement's creation, the next one (a future worldTime counts
    # as now, so the replacement, Ready for less than that, is kept)
    later = decide(running(new, **forged), new, now=NOW + 1 + GRACE)
    assert later.delete_pods == ["mnist-worker-1"]


def test_pod_state_reads_when_a_pod_turned_ready_and_was_created() -> None:
    body = {
        "metadata": {
            "name": "mnist-worker-0",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"accordion.dev/run": "mnist", "accordion.dev/role": "worker"},
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:30Z"}
            ],
        },
    }
    st = pod_state(body)
    assert st.created is not None
    assert st.ready_since == st.created + 30
    not_ready = merge(body, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert pod_state(not_ready).ready_since is None
