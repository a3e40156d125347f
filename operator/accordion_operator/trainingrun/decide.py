"""Reconcile a TrainingRun: observed run + children + the allocator's grant -> a plan.

Pure functions only. `decide_run` re-derives everything from what it is given (level-based), so
calling it again after a crash, with the same observations, gives the same plan; creations use
deterministic names (the apiserver refuses duplicates) and deletions are by name.

The decision runs in named phases, each a function of typed inputs to a typed result:
admission (the grant, an invalid spec, spec.suspend); for an admitted run the phases of
`trainingrun.phases` (launcher lifecycle, worker failures, children to create and delete,
below-minimum deadline, Running condition); the release of every pod of a run that must not
run; the conditions every active run carries; and the status, a `TrainingRunStatus` that
becomes the status merge patch in one place (`status_patch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.common import Condition
from accordion_operator.api.trainingrun import (
    COND_ADMITTED,
    COND_FAILED,
    COND_RUNNING,
    COND_SCALING,
    COND_SUCCEEDED,
    COND_SUSPENDED,
    CONDITION_TYPES,
    FINISHED_PHASES,
    REASON_GANG_ADMITTED,
    REASON_IN_PROGRESS,
    REASON_NOT_RUNNING,
    REASON_NOT_SUSPENDED,
    REASON_QUEUED,
    REASON_SCALING_DOWN,
    REASON_SCALING_UP,
    REASON_STABLE,
    REASON_SUSPENDED,
    Phase,
    TrainingRun,
    TrainingRunStatus,
)
from accordion_operator.config import Config
from accordion_operator.core.conditions import Conditions
from accordion_operator.core.status import merge_patch
from accordion_operator.core.timefmt import from_rfc3339, to_rfc3339
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.kueue import REASON_KUEUE_PENDING
from accordion_operator.trainingrun.observe import Children
from accordion_operator.trainingrun.phases import (
    Changes,
    Cond,
    Event,
    Pods,
    Progress,
    running,
)

#: The grant of a run the allocator did not see. Only runs that are suspended, finished, being
#: deleted or invalid take no part in allocation, and they are decided before the grant is read.
NO_GRANT = Grant(0, REASON_QUEUED, "")


@dataclass
class Plan:
    """What to do for one run; the kube layer executes it in this order."""

    #: objects to create (auth objects first, then pods); AlreadyExists is success
    create: list[dict[str, Any]] = field(default_factory=list)
    #: whether the ssh Secret/SA/Role/RoleBinding must be ensured before pods
    ensure_auth: bool = False
    #: pod names to delete
    delete_pods: list[str] = field(default_factory=list)
    #: merge patch for the status subresource (None: unchanged)
    status_patch: dict[str, Any] | None = None
    #: (type, reason, message) Events on the run
    events: list[Event] = field(default_factory=list)
    #: the run outlived ttlSecondsAfterFinished: delete it (children cascade)
    delete_run: bool = False
    #: check again after this many seconds even without any event (backoff, TTL, timeouts)
    requeue_after: float | None = None
    #: a Kueue-admitted run's Workloads to create and delete by name (`trainingrun.kueue`)
    workloads_create: list[dict[str, Any]] = field(default_factory=list)
    workloads_delete: list[str] = field(default_factory=list)


# --- inputs and results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Book:
    """The timestamps and counters the status carries from pass to pass."""

    admitted_time: str | None
    start_time: str | None
    completion_time: str | None
    last_scale_time: str | None
    launcher_restarts: int
    stall_restarts: int
    launcher_failed_time: str | None
    #: re-derived each pass: set only while fewer than `min` workers are ready
    below_min_since: str | None


@dataclass(frozen=True)
class Counts:
    """The worker counts the status reports."""

    current: int = 0
    desired: int = 0
    ready: int = 0
    gpus: int = 0


@dataclass(frozen=True)
class Admission:
    """What the grant (or an invalid spec, or spec.suspend) makes of the run."""

    phase: Phase
    message: str
    #: workers granted; 0 unless the phase is Running
    workers: int
    conditions: tuple[Cond, ...]


@dataclass(frozen=True)
class OwnStatus:
    """The status fields the operator alone may set, as it last wrote them (or first saw them).
    The status subresource is writable by the run's own launcher token: where status disagrees,
    these win and are written back."""

    phase: str
    last_scale_time: str | None


# --- the decision --------------------------------------------------------------------------------


def decide_run(
    run: TrainingRun,
    children: Children,
    grant: Grant,
    *,
    invalid: tuple[str, str] | None,
    cfg: Config,
    now: float,
    own: OwnStatus | None = None,
) -> Plan:
    """Observed run + children + grant -> plan (children to create/delete, status, events).
    `invalid` is check_run's verdict: (reason, message) keeps the run from starting. `own`: what
    the operator last wrote of the fields only it sets (None: status is trusted as it is)."""
    if run.metadata.deletion_timestamp:
        return Plan()  # garbage collection removes the children
    restore = _forged(run, own)
    if restore:
        # decide as if the forged values were never written, and write the operator's back
        assert own is not None
        st = run.status.model_copy(
            update={"phase": own.phase, "last_scale_time": own.last_scale_time}
        )
        run = run.model_copy(update={"status": st})
    pods = Pods.of(children)
    if run.status.phase in FINISHED_PHASES:
        plan = _decide_finished(run, pods, now)
    else:
        plan = _decide_active(run, pods, admission(run, grant, invalid), cfg, now)
    if restore:
        plan.status_patch = {**restore, **(plan.status_patch or {})}
    return plan


def _forged(run: TrainingRun, own: OwnStatus | None) -> dict[str, Any]:
    """The operator's values of the fields someone else overwrote (a merge patch; {}: none)."""
    if own is None:
        return {}
    st, out = run.status, dict[str, Any]()
    if (st.phase or "Pending") != own.phase:
        out["phase"] = own.phase
    if st.last_scale_time != own.last_scale_time:
        out["lastScaleTime"] = own.last_scale_time
    return out


def _decide_finished(run: TrainingRun, pods: Pods, now: float) -> Plan:
    """A finished run keeps its conditions and its launcher (for its logs) until
    ttlSecondsAfterFinished; workers still alive are freed."""
    st = run.status
    assert st.phase is not None  # a finished phase
    status = _status(
        run,
        phase=st.phase,
        conditions=_ordered({c.type: c for c in st.conditions}),
        message=st.message or "",
        counts=Counts(),
        book=bookkeeping(run, Progress(), runs=False, rescaled=False, now=now),
    )
    plan = Plan(delete_pods=[p.name for p in pods.live], status_patch=status_patch(run, status))
    if run.spec.ttl_seconds_after_finished is not None:
        done = from_rfc3339(st.completion_time) or now
        left = done + run.spec.ttl_seconds_after_finished - now
        if left <= 0:
            plan.delete_run = True
        else:
            plan.requeue_after = left
    return plan


def _decide_active(run: TrainingRun, pods: Pods, adm: Admission, cfg: Config, now: float) -> Plan:
    """A run not finished: after its admission, the phases of an admitted run (`running`), the
    release of the pods of a run that must not run, the conditions no phase set, the status."""
    st = run.status
    runs = adm.phase == "Running"
    progress = running(run, pods, adm.workers, cfg, now) if runs else Progress()
    phase, message, desired = adm.phase, adm.message, adm.workers
    changes, conds = progress.changes, [*adm.conditions, *progress.conditions]
    if progress.outcome is not None:
        outcome = progress.outcome
        phase, message, desired = outcome.phase, outcome.message, 0
        conds += outcome.conditions
        changes += Changes(events=(outcome.event,))
    if phase != "Running":
        changes = release(pods, changes, keep_launcher=progress.outcome is not None)
    counts = Counts(
        current=len(pods.live),
        desired=desired,
        ready=len(pods.ready),
        gpus=sum(p.gpus for p in pods.live if p.node),
    )
    conds += closing_conditions(phase, message, counts, suspended=adm.phase == "Suspended")
    tracked = Conditions(st.conditions, run.metadata.generation, now, CONDITION_TYPES)
    for c in conds:
        tracked.set(c.type, c.status, c.reason, c.message)
    rescaled = desired != (st.desired_workers or 0)
    status = _status(
        run,
        phase=phase,
        conditions=_ordered(tracked.new),
        message=message,
        counts=counts,
        book=bookkeeping(run, progress, runs=runs, rescaled=rescaled, now=now),
    )
    return Plan(
        create=list(changes.create),
        ensure_auth=changes.ensure_auth,
        delete_pods=list(changes.delete),
        status_patch=status_patch(run, status),
        events=[*changes.events, *admission_events(tracked)],
        requeue_after=progress.requeue_after,
    )


# --- admission -----------------------------------------------------------------------------------


def admission(run: TrainingRun, grant: Grant, invalid: tuple[str, str] | None) -> Admission:
    """Whether the run may run: not with an invalid spec, nor suspended, nor without a grant."""
    if invalid is not None:
        reason, msg = invalid
        return Admission("Pending", msg, 0, (Cond(COND_ADMITTED, False, reason, msg),))
    if run.spec.suspend:
        msg = "spec.suspend is true: all GPUs released, checkpoints kept"
        return Admission(
            "Suspended",
            msg,
            0,
            (
                Cond(COND_ADMITTED, False, REASON_SUSPENDED, msg),
                Cond(COND_SUSPENDED, True, REASON_SUSPENDED, msg),
            ),
        )
    if grant.workers <= 0:
        return Admission(
            "Queued", grant.message, 0, (Cond(COND_ADMITTED, False, grant.reason, grant.message),)
        )
    # the allocator's grants say MinimumWorkersFit, Kueue's AdmittedByKueue
    admitted = Cond(COND_ADMITTED, True, grant.reason or REASON_GANG_ADMITTED, grant.message)
    return Admission("Running", "", grant.workers, (admitted,))


def admission_events(conds: Conditions) -> list[Event]:
    """A Warning Event when admission turns bad (invalid input, preempted, no nodes). Being
    admitted or queued is visible in status and the printer columns; an Event each would be
    10,000 writes when 10,000 runs arrive at once."""
    if not conds.changed(COND_ADMITTED):
        return []
    adm = conds.new[COND_ADMITTED]
    if adm.status != "False" or adm.reason in (
        REASON_SUSPENDED,
        REASON_QUEUED,
        REASON_KUEUE_PENDING,
    ):
        return []
    return [("Warning", adm.reason, adm.message)]


# --- a run that must not run, and what every active run carries ----------------------------------


def release(pods: Pods, changes: Changes, *, keep_launcher: bool) -> Changes:
    """Nothing runs: free every GPU (checkpoints stay in the results bucket) and create nothing.
    A run that just finished keeps its launcher, for its logs, until the TTL: unless it hosts
    worker 0 and still runs, holding that worker's GPUs."""
    freed = tuple(
        p.name
        for p in pods.all
        if not p.deleting
        and p.name not in changes.delete
        and not (
            keep_launcher and p.role == builders.ROLE_LAUNCHER and not (p.hosts_worker and p.live)
        )
    )
    return Changes(delete=changes.delete + freed, events=changes.events)


def closing_conditions(
    phase: Phase, message: str, counts: Counts, *, suspended: bool
) -> list[Cond]:
    """The conditions of an active run that no phase set: Running, Suspended, Succeeded and
    Failed at rest, and Scaling while current workers differ from the grant."""
    conds: list[Cond] = []
    if phase != "Running":
        conds.append(Cond(COND_RUNNING, False, REASON_NOT_RUNNING, message))
    if not suspended:
        conds.append(Cond(COND_SUSPENDED, False, REASON_NOT_SUSPENDED))
    if phase not in FINISHED_PHASES:
        conds.append(Cond(COND_SUCCEEDED, False, REASON_IN_PROGRESS))
        conds.append(Cond(COND_FAILED, False, REASON_IN_PROGRESS))
    current, desired = counts.current, counts.desired
    if phase == "Running" and current != desired:
        direction = REASON_SCALING_UP if desired > current else REASON_SCALING_DOWN
        conds.append(Cond(COND_SCALING, True, direction, f"{current} -> {desired} workers"))
    else:
        conds.append(Cond(COND_SCALING, False, REASON_STABLE))
    return conds


# --- status --------------------------------------------------------------------------------------


def bookkeeping(
    run: TrainingRun, progress: Progress, *, runs: bool, rescaled: bool, now: float
) -> Book:
    """The status' timestamps and counters: carried over, the admission and start stamped once
    the run `runs`, the completion once it finished, the last scale when the grant changed
    (`rescaled`), and what the phases of an admitted run noted."""
    st, stamp = run.status, to_rfc3339(now)
    finished = progress.outcome is not None
    return Book(
        admitted_time=(st.admitted_time or stamp) if runs else st.admitted_time,
        start_time=(st.start_time or stamp) if runs else st.start_time,
        completion_time=(st.completion_time or stamp) if finished else st.completion_time,
        last_scale_time=stamp if rescaled else st.last_scale_time,
        launcher_restarts=(st.launcher_restarts or 0) + (1 if progress.restarted else 0),
        stall_restarts=(st.stall_restarts or 0) + (1 if progress.stalled else 0),
        launcher_failed_time=progress.launcher_failed_time or st.launcher_failed_time or None,
        below_min_since=progress.below_min_since,
    )


def _ordered(conds: Mapping[str, Condition]) -> list[Condition]:
    return [conds[t] for t in CONDITION_TYPES if t in conds]


def _status(
    run: TrainingRun,
    *,
    phase: Phase,
    conditions: list[Condition],
    message: str,
    counts: Counts,
    book: Book,
) -> TrainingRunStatus:
    """The operator-owned status (`training` is the trainer's)."""
    return TrainingRunStatus(
        phase=phase,
        conditions=conditions,
        observed_generation=run.metadata.generation,
        current_workers=counts.current,
        desired_workers=counts.desired,
        ready_workers=counts.ready,
        worker_summary=f"{counts.current}/{counts.desired}",
        gpus=counts.gpus,
        selector=builders.selector(run.metadata.name),
        admitted_time=book.admitted_time,
        start_time=book.start_time,
        completion_time=book.completion_time,
        last_scale_time=book.last_scale_time,
        below_min_since=book.below_min_since,
        launcher_restarts=book.launcher_restarts or None,
        stall_restarts=book.stall_restarts or None,
        launcher_failed_time=book.launcher_failed_time,
        # where the pods were told to write, from admission on; never the trainer's report in
        # `training` (user code can steer it), and restored should a launcher patch it
        results_uri=run.results_uri if book.admitted_time else None,
        message=message[:256] or None,
    )


def _owned(status: TrainingRunStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, exclude={"training"})


def status_patch(run: TrainingRun, status: TrainingRunStatus) -> dict[str, Any] | None:
    """The status merge patch from the run's status to `status`, over the operator-owned fields:
    `training` belongs to the trainer and stays out of it (None: nothing to write)."""
    return merge_patch(_owned(run.status), _owned(status))


# --- what the controller decides outside decide_run ----------------------------------------------


def unparsable_plan(body: Mapping[str, Any], invalid: tuple[str, str], now: float) -> Plan | None:
    """A run whose spec the models reject (e.g. a hyperparameter that is an object): Pending with
    Admitted=False and a Warning Event, once (None when its status already says so). Written from
    the raw body: there is no model of it."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    reason, message = invalid
    conds = status.get("conditions") or []
    if any(c.get("type") == COND_ADMITTED and c.get("reason") == reason for c in conds):
        return None
    generation = meta.get("generation", 0)
    admitted = {
        "type": COND_ADMITTED,
        "status": "False",
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": to_rfc3339(now),
        "observedGeneration": generation,
    }
    return Plan(
        status_patch={
            "phase": "Pending",
            "observedGeneration": generation,
            "conditions": [admitted],
            "message": message[:256],
        },
        events=[("Warning", reason, message)],
    )


def rescale_reason(run: TrainingRun, old: int, new: int, *, preempted: bool) -> str:
    """Why a run's desired workers went from `old` to `new` (the `reason` of the rescale
    metric); `preempted`: the plan reported the run preempted by a higher priority."""
    if old == 0:
        return "Admitted"
    if preempted:
        return "Preempted"
    if new < old:
        # a user's `kubectl scale` (or edit of workers) below the current grant, else the GPUs
        # went to others
        workers = run.spec.workers
        return "SpecChanged" if new >= min(workers.requested, workers.max) else "Preempted"
    return "CapacityAvailable"
