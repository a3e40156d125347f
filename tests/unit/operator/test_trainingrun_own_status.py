"""Status fields only the operator may set (issue 16: "status fields that only the operator
should write are ignored (re-derived) when someone else writes them"). The status subresource
is writable by the run's own launcher token, so a forged `phase` or `lastScaleTime` is decided
as if it had not been written, and the operator's value is written back."""

from __future__ import annotations

from trainingrun_factory import launcher, make_run, worker

from accordion_operator.config import Config
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.decide import OwnStatus, Plan, decide_run
from accordion_operator.trainingrun.observe import Children

CFG = Config()
NOW = 1_800_000_000.0
RUNNING_COND = {
    "type": "Running",
    "status": "True",
    "reason": "Training",
    "lastTransitionTime": "2027-01-15T08:00:00Z",
}


def decide(status: dict[str, object], own: OwnStatus | None) -> Plan:
    run = make_run(spec={"workers": {"min": 1, "max": 2}}, status=status)
    pods = [
        launcher(phase="Running", ready=True, node="n0"),
        worker(0, phase="Running", ready=True, node="n0"),
        worker(1, phase="Running", ready=True, node="n0"),
    ]
    return decide_run(
        run,
        Children(pods, auth_ready=True),
        Grant(2, "MinimumWorkersFit", "granted 2"),
        invalid=None,
        cfg=CFG,
        now=NOW,
        own=own,
    )


def running_status(**extra: object) -> dict[str, object]:
    return {
        "phase": "Running",
        "desiredWorkers": 2,
        "startTime": "2027-01-15T08:00:00Z",
        "lastScaleTime": "2027-01-15T08:00:00Z",
        "conditions": [RUNNING_COND],
        **extra,
    }


def test_a_forged_succeeded_phase_keeps_the_run_running_and_is_written_back() -> None:
    forged = running_status(phase="Succeeded")
    own = OwnStatus("Running", "2027-01-15T08:00:00Z")
    plan = decide(forged, own)
    assert plan.delete_pods == []  # the workers keep training
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Running"
    # without the operator's record (a fresh operator), status is all there is: it finishes
    trusted = decide(forged, None)
    assert sorted(trusted.delete_pods) == ["mnist-worker-0", "mnist-worker-1"]


def test_a_forged_last_scale_time_is_put_back() -> None:
    plan = decide(
        running_status(lastScaleTime="2027-01-15T09:59:59Z"),
        OwnStatus("Running", "2027-01-15T08:00:00Z"),
    )
    assert plan.status_patch is not None
    assert plan.status_patch["lastScaleTime"] == "2027-01-15T08:00:00Z"


def test_nothing_forged_nothing_restored() -> None:
    """With the operator's record equal to status, the plan is what it is without a record."""
    own = OwnStatus("Running", "2027-01-15T08:00:00Z")
    assert decide(running_status(), own) == decide(running_status(), None)
