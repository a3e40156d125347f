"""The TrainingRun lifecycle as a table of transitions.

Each row: what the operator observes (the run's spec and status, its pods, the allocator's grant,
an input check's verdict) -> what its plan does (the phase and conditions the status shows after
the plan, the pods it creates and deletes, the Events it emits, when it looks again without any
event, whether it deletes the run). Read top to bottom, the table specifies a run's life; the
details (messages, timestamps, counts) are in test_trainingrun_decide.py.

A row lists only the conditions that differ from an active run at rest (`AT_REST`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from merge_patch import merge
from trainingrun_factory import launcher, make_run, worker

from accordion_operator.config import Config
from accordion_operator.core.timefmt import to_rfc3339
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.decide import NO_GRANT, decide_run
from accordion_operator.trainingrun.observe import Children, PodState

NOW = 1_800_000_000.0
#: the launcher's restarts wait 10 s, 20 s, 40 s, then 60 s each
#: the table is the launcher-of-its-own mode, where every worker index is a pod of its own;
#: test_launcher_hosts_worker.py decides the default, a launcher that hosts worker 0
CFG = Config(
    launcher_backoff_seconds=10, launcher_backoff_max_seconds=60, launcher_hosts_worker=False
)
#: the default spec.workers.minAvailableTimeoutSeconds: a run not yet at its minimum is checked
#: again at this deadline
MIN_TIMEOUT = 600.0

#: the conditions of an active run at rest: not suspended, not finished, at its grant
AT_REST = (
    "Suspended False NotSuspended",
    "Succeeded False InProgress",
    "Failed False InProgress",
    "Scaling False Stable",
)


def admit(workers: int) -> Grant:
    return Grant(workers, "MinimumWorkersFit", f"granted {workers} workers")


QUEUED = Grant(0, "WaitingForGPUs", "waiting for 1 GPUs")
PREEMPTED = Grant(0, "PreemptedByHigherPriority", "preempted by team-b/urgent")


def conditions(*rows: str) -> list[dict[str, str]]:
    """Status conditions from "Type Status Reason" rows."""
    return [
        {"type": t, "status": s, "reason": r, "lastTransitionTime": to_rfc3339(NOW - 3600)}
        for t, s, r in (row.split() for row in rows)
    ]


def at_rest_but(*rows: str) -> list[str]:
    """AT_REST with `rows` ("Type Status Reason") in place of the conditions of their types."""
    return list({row.split()[0]: row for row in (*AT_REST, *rows)}.values())


ADMITTED = "Admitted True MinimumWorkersFit"
TRAINING = "Running True Training"
STARTING = "Running False WorkersStarting"
NOT_RUNNING = "Running False NotRunning"
COMPLETED = (ADMITTED, NOT_RUNNING, "Succeeded True TrainingCompleted")
#: the status of a run that finished 30 s ago
SUCCEEDED = {
    "phase": "Succeeded",
    "completionTime": to_rfc3339(NOW - 30),
    "conditions": conditions(*at_rest_but(*COMPLETED)),
}


@dataclass(frozen=True)
class Observed:
    spec: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()
    grant: Grant = NO_GRANT
    #: check_run's verdict (reason, message)
    invalid: tuple[str, str] | None = None
    now: float = NOW


@dataclass(frozen=True)
class Planned:
    phase: str
    #: "Type Status Reason" of each condition that differs from AT_REST
    conditions: tuple[str, ...] = ()
    created: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    #: the Events' reasons
    events: tuple[str, ...] = ()
    requeue: float | None = None
    delete_run: bool = False


LAUNCHER = "mnist-launcher"
W0, W1, W2, W3 = (f"mnist-worker-{i}" for i in range(4))

TRANSITIONS: list[tuple[str, Observed, Planned]] = [
    (
        "queued: the minimum does not fit, nothing is created, no Event",
        Observed(grant=QUEUED),
        Planned("Queued", ("Admitted False WaitingForGPUs", NOT_RUNNING)),
    ),
    (
        "admitted: the launcher and the granted workers are created",
        Observed(grant=admit(2)),
        Planned(
            "Running",
            (ADMITTED, STARTING, "Scaling True ScalingUp"),
            created=(LAUNCHER, W0, W1),
            requeue=MIN_TIMEOUT,
        ),
    ),
    (
        "launcher up, no workers: workers created up to the grant",
        Observed(pods=(launcher(),), grant=admit(2)),
        Planned(
            "Running",
            (ADMITTED, STARTING, "Scaling True ScalingUp"),
            created=(W0, W1),
            requeue=MIN_TIMEOUT,
        ),
    ),
    (
        "training: the launcher runs with the granted workers ready; no pod changes",
        Observed(pods=(launcher(), worker(0), worker(1)), grant=admit(2)),
        Planned("Running", (ADMITTED, TRAINING)),
    ),
    (
        "scale up: more GPUs granted, workers created at the next indices",
        Observed(pods=(launcher(), worker(0), worker(1)), grant=admit(4)),
        Planned("Running", (ADMITTED, TRAINING, "Scaling True ScalingUp"), created=(W2, W3)),
    ),
    (
        "scale down: unscheduled, then unready workers go first",
        Observed(
            pods=(launcher(), worker(0), worker(1, ready=False), worker(2, node=None, ready=False)),
            grant=admit(1),
        ),
        Planned("Running", (ADMITTED, TRAINING, "Scaling True ScalingDown"), deleted=(W2, W1)),
    ),
    (
        "scale down: rank 0's pod (it writes checkpoints and the model) goes last",
        Observed(
            status={"training": {"epoch": 1, "rank0Pod": W2}},
            pods=(launcher(), worker(0), worker(1), worker(2)),
            grant=admit(1),
        ),
        Planned("Running", (ADMITTED, TRAINING, "Scaling True ScalingDown"), deleted=(W1, W0)),
    ),
    *(
        (
            f"worker failed ({why}): replaced at a free index",
            Observed(
                pods=(launcher(), worker(0), worker(1, phase="Failed", exit_code=code)),
                grant=admit(2),
            ),
            Planned(
                "Running",
                (ADMITTED, TRAINING, "Scaling True ScalingUp"),
                created=(W2,),
                deleted=(W1,),
                events=("WorkerReplaced",),
            ),
        )
        for code, why in ((137, "killed"), (10, "retryable trainer error DataUnreachable"))
    ),
    (
        "launcher failed: it waits for its backoff (10 s after it ended)",
        Observed(
            pods=(launcher(phase="Failed", exit_code=1, finished_at=NOW - 5), worker(0)),
            grant=admit(1),
        ),
        Planned("Running", (ADMITTED, "Running False LauncherBackoff"), requeue=5),
    ),
    (
        "launcher failed, backoff over: restarted, resuming from the last checkpoint",
        Observed(
            pods=(launcher(phase="Failed", exit_code=1, finished_at=NOW - 15), worker(0)),
            grant=admit(1),
        ),
        Planned(
            "Running",
            (ADMITTED, "Running False LauncherBackoff"),
            deleted=(LAUNCHER,),
            events=("LauncherRestart",),
        ),
    ),
    (
        "launcher failed backoffLimit + 1 times: the run fails",
        Observed(
            spec={"backoffLimit": 2},
            status={"launcherRestarts": 2},
            pods=(launcher(phase="Failed", exit_code=1), worker(0)),
            grant=admit(1),
        ),
        Planned(
            "Failed",
            (ADMITTED, NOT_RUNNING, "Failed True BackoffLimitExceeded"),
            deleted=(W0,),
            events=("BackoffLimitExceeded",),
        ),
    ),
    (
        "permanent trainer error in the launcher (exit 12, DataNotFound): fails, no restart",
        Observed(pods=(launcher(phase="Failed", exit_code=12), worker(0)), grant=admit(1)),
        Planned(
            "Failed",
            (ADMITTED, NOT_RUNNING, "Failed True DataNotFound"),
            deleted=(W0,),
            events=("DataNotFound",),
        ),
    ),
    (
        "permanent trainer error in a worker (exit 11, DataAccessDenied): fails, no replacement",
        Observed(
            pods=(launcher(), worker(0), worker(1, phase="Failed", exit_code=11)),
            grant=admit(2),
        ),
        Planned(
            "Failed",
            (ADMITTED, NOT_RUNNING, "Failed True DataAccessDenied"),
            deleted=(W0, W1),
            events=("DataAccessDenied",),
        ),
    ),
    (
        "below the minimum: checked again at the deadline",
        Observed(
            spec={"workers": {"min": 2, "minAvailableTimeoutSeconds": 60}},
            status={"belowMinSince": to_rfc3339(NOW - 20)},
            pods=(launcher(), worker(0), worker(1, ready=False)),
            grant=admit(2),
        ),
        Planned("Running", (ADMITTED, STARTING), requeue=40),
    ),
    (
        "below the minimum for minAvailableTimeoutSeconds: fails",
        Observed(
            spec={"workers": {"min": 2, "minAvailableTimeoutSeconds": 60}},
            status={"belowMinSince": to_rfc3339(NOW - 61)},
            pods=(launcher(), worker(0), worker(1, ready=False)),
            grant=admit(2),
        ),
        Planned(
            "Failed",
            (ADMITTED, NOT_RUNNING, "Failed True BelowMinimumWorkers"),
            deleted=(W0, W1),
            events=("BelowMinimumWorkers",),
        ),
    ),
    (
        "image pull failure: shown in Running",
        Observed(
            pods=(
                launcher(),
                worker(0, phase="Pending", waiting_reason="ErrImagePull", waiting_message="404"),
            ),
            grant=admit(1),
        ),
        Planned("Running", (ADMITTED, "Running False ImagePullFailed"), requeue=MIN_TIMEOUT),
    ),
    (
        "preempted: every pod released, a Warning",
        Observed(status={"phase": "Running"}, pods=(launcher(), worker(0)), grant=PREEMPTED),
        Planned(
            "Queued",
            ("Admitted False PreemptedByHigherPriority", NOT_RUNNING),
            deleted=(LAUNCHER, W0),
            events=("PreemptedByHigherPriority",),
        ),
    ),
    (
        "suspended: every pod released, checkpoints kept",
        Observed(spec={"suspend": True}, status={"phase": "Running"}, pods=(launcher(), worker(0))),
        Planned(
            "Suspended",
            ("Admitted False Suspended", NOT_RUNNING, "Suspended True Suspended"),
            deleted=(LAUNCHER, W0),
        ),
    ),
    (
        "launcher exited 0: Succeeded, workers freed, the launcher kept for its logs",
        Observed(pods=(launcher(phase="Succeeded", exit_code=0), worker(0)), grant=admit(1)),
        Planned(
            "Succeeded",
            COMPLETED,
            deleted=(W0,),
            events=("TrainingCompleted",),
        ),
    ),
    (
        "finished: the launcher stays until ttlSecondsAfterFinished",
        Observed(
            spec={"ttlSecondsAfterFinished": 60},
            status=SUCCEEDED,
            pods=(launcher(phase="Succeeded", exit_code=0),),
        ),
        Planned("Succeeded", COMPLETED, requeue=30),
    ),
    (
        "finished, ttlSecondsAfterFinished passed: the run is deleted (its pods with it)",
        Observed(
            spec={"ttlSecondsAfterFinished": 60},
            status=SUCCEEDED,
            pods=(launcher(phase="Succeeded", exit_code=0),),
            now=NOW + 31,
        ),
        Planned("Succeeded", COMPLETED, delete_run=True),
    ),
    (
        "invalid spec (credentials Secret missing): reported, not started",
        Observed(invalid=("CredentialsSecretNotFound", "Secret team-a/s3 not found")),
        Planned(
            "Pending",
            ("Admitted False CredentialsSecretNotFound", NOT_RUNNING),
            events=("CredentialsSecretNotFound",),
        ),
    ),
]


@pytest.mark.parametrize(
    ("observed", "planned"), [pytest.param(o, p, id=name) for name, o, p in TRANSITIONS]
)
def test_transition(observed: Observed, planned: Planned) -> None:
    run = make_run(spec=observed.spec, status=observed.status)
    plan = decide_run(
        run,
        Children(observed.pods, auth_ready=True),
        observed.grant,
        invalid=observed.invalid,
        cfg=CFG,
        now=observed.now,
    )
    status = merge(observed.status, plan.status_patch or {})
    assert status["phase"] == planned.phase
    got = [f"{c['type']} {c['status']} {c['reason']}" for c in status["conditions"]]
    assert sorted(got) == sorted(at_rest_but(*planned.conditions))
    assert [o["metadata"]["name"] for o in plan.create] == list(planned.created)
    assert plan.delete_pods == list(planned.deleted)
    assert [reason for _, reason, _ in plan.events] == list(planned.events)
    if planned.requeue is None:
        assert plan.requeue_after is None
    else:
        assert plan.requeue_after == pytest.approx(planned.requeue)
    assert plan.delete_run == planned.delete_run
