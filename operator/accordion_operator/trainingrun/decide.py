"""Reconcile a TrainingRun: observed run + children + the allocator's grant -> a plan.

Pure functions only. `decide_run` re-derives everything from what it is given (level-based), so
calling it again after a crash, with the same observations, gives the same plan; creations use
deterministic names (the apiserver refuses duplicates) and deletions are by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.trainingrun import (
    COND_ADMITTED,
    COND_FAILED,
    COND_RUNNING,
    COND_SCALING,
    COND_SUCCEEDED,
    COND_SUSPENDED,
    CONDITION_TYPES,
    FINISHED_PHASES,
    PERMANENT_TRAINER_REASONS,
    REASON_BACKOFF_LIMIT,
    REASON_BELOW_MIN,
    REASON_COMPLETED,
    REASON_GANG_ADMITTED,
    REASON_IMAGE_PULL,
    REASON_IN_PROGRESS,
    REASON_LAUNCHER_BACKOFF,
    REASON_NOT_RUNNING,
    REASON_NOT_SUSPENDED,
    REASON_QUEUED,
    REASON_SCALING_DOWN,
    REASON_SCALING_UP,
    REASON_STABLE,
    REASON_STARTING,
    REASON_SUSPENDED,
    REASON_TRAINING,
    TrainingRun,
)
from accordion_operator.config import Config
from accordion_operator.core.conditions import Conditions
from accordion_operator.core.timefmt import from_rfc3339, to_rfc3339
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.observe import (
    EXIT_REASONS,
    IMAGE_PULL_REASONS,
    Children,
    PodState,
)


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
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: the run outlived ttlSecondsAfterFinished: delete it (children cascade)
    delete_run: bool = False
    #: check again after this many seconds even without any event (backoff, TTL, timeouts)
    requeue_after: float | None = None


def _owned_status(run: TrainingRun) -> dict[str, Any]:
    """The operator-owned part of the current status (everything but `training`)."""
    return run.status.model_dump(by_alias=True, exclude_none=True, exclude={"training"})


def _finish_patch(run: TrainingRun, new: dict[str, Any]) -> dict[str, Any] | None:
    old = _owned_status(run)
    if old == new:
        return None
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None  # merge patch: null removes
    return patch


def _pick_victims(live: Sequence[PodState], count: int, rank0: str | None) -> list[PodState]:
    """Workers to remove when scaling down: never-scheduled first, then not ready, then the
    highest index, so the workers that are training keep training; rank 0's pod (it writes the
    checkpoints and the final model) last of all."""
    order = sorted(
        live, key=lambda p: (p.name == rank0, p.node is not None, p.ready, -(p.index or 0))
    )
    return order[:count]


def _free_indices(pods: Sequence[PodState], count: int) -> list[int]:
    taken = {p.index for p in pods if p.index is not None}
    out: list[int] = []
    i = 0
    while len(out) < count:
        if i not in taken:
            out.append(i)
        i += 1
    return out


def decide_run(
    run: TrainingRun,
    children: Children,
    grant_workers: int,
    grant_reason: str,
    grant_message: str,
    invalid: tuple[str, str] | None,
    cfg: Config,
    now: float,
) -> Plan:
    """Observed run + children + grant -> plan (children to create/delete, status, events)."""
    plan = Plan()
    if run.metadata.deletion_timestamp:
        return plan  # garbage collection removes the children
    spec, st = run.spec, run.status
    conds = Conditions(run.status.conditions, run.metadata.generation, now, CONDITION_TYPES)
    workers = [p for p in children.pods if p.role == builders.ROLE_WORKER]
    launchers = [p for p in children.pods if p.role == builders.ROLE_LAUNCHER]
    live = [p for p in workers if p.live]
    ready = [p for p in live if p.ready]
    launcher = launchers[0] if launchers else None
    new: dict[str, Any] = {}
    for key in ("admittedTime", "startTime", "completionTime", "lastScaleTime", "resultsURI"):
        value = _owned_status(run).get(key)
        if value is not None:
            new[key] = value
    restarts = st.launcher_restarts or 0
    if restarts:
        new["launcherRestarts"] = restarts
    if st.launcher_failed_time:
        new["launcherFailedTime"] = st.launcher_failed_time
    if st.training and st.training.results_uri:
        new["resultsURI"] = st.training.results_uri
    phase = st.phase or "Pending"
    desired = 0
    message = ""

    def finish(ok: bool, reason: str, msg: str) -> None:
        nonlocal phase, message
        phase = "Succeeded" if ok else "Failed"
        message = msg
        new["completionTime"] = new.get("completionTime") or to_rfc3339(now)
        conds.set(COND_SUCCEEDED, ok, reason if ok else REASON_IN_PROGRESS, msg if ok else "")
        conds.set(COND_FAILED, not ok, reason if not ok else REASON_IN_PROGRESS, "" if ok else msg)
        plan.events.append(("Normal" if ok else "Warning", reason, msg))

    finished = st.phase in FINISHED_PHASES
    if finished:
        for c in st.conditions:
            conds.new[c.type] = c
        message = st.message or ""
    elif invalid is not None:
        reason, msg = invalid
        phase, message = "Pending", msg
        conds.set(COND_ADMITTED, False, reason, msg)
    elif spec.suspend:
        phase, message = "Suspended", "spec.suspend is true: all GPUs released, checkpoints kept"
        conds.set(COND_ADMITTED, False, REASON_SUSPENDED, message)
        conds.set(COND_SUSPENDED, True, REASON_SUSPENDED, message)
    elif grant_workers <= 0:
        phase, message = "Queued", grant_message
        conds.set(COND_ADMITTED, False, grant_reason, grant_message)
    else:
        desired = grant_workers
        conds.set(COND_ADMITTED, True, REASON_GANG_ADMITTED, grant_message)
        new["admittedTime"] = new.get("admittedTime") or to_rfc3339(now)
        new["startTime"] = new.get("startTime") or to_rfc3339(now)
        phase = "Running"
        # launcher lifecycle
        if launcher is not None and launcher.phase == "Succeeded":
            finish(True, REASON_COMPLETED, "training finished; results written")
        elif launcher is not None and launcher.phase == "Failed" and not launcher.deleting:
            reason = EXIT_REASONS.get(launcher.exit_code or 1, "TrainingError")
            detail = launcher.message or f"launcher exited with code {launcher.exit_code}"
            if reason in PERMANENT_TRAINER_REASONS:
                finish(False, reason, f"{reason}: {detail}")
            elif restarts >= spec.backoff_limit:
                finish(
                    False,
                    REASON_BACKOFF_LIMIT,
                    f"launcher failed {restarts + 1} times (backoffLimit {spec.backoff_limit}); "
                    f"last: {reason}: {detail}",
                )
            else:
                delay = min(
                    cfg.launcher_backoff_seconds * 2**restarts, cfg.launcher_backoff_max_seconds
                )
                failed_at = launcher.finished_at or from_rfc3339(st.launcher_failed_time) or now
                new["launcherFailedTime"] = to_rfc3339(failed_at)
                wait = failed_at + delay - now
                if wait <= 0:
                    plan.delete_pods.append(launcher.name)
                    new["launcherRestarts"] = restarts + 1
                    plan.events.append(
                        (
                            "Warning",
                            "LauncherRestart",
                            f"restart {restarts + 1}/{spec.backoff_limit} "
                            f"after {reason}: {detail}; resuming from the last checkpoint",
                        )
                    )
                else:
                    plan.requeue_after = wait
                conds.set(
                    COND_RUNNING,
                    False,
                    REASON_LAUNCHER_BACKOFF,
                    f"launcher failed ({reason}: {detail}); restart in {max(0.0, wait):.0f} s",
                )
        # a worker that failed its data stage-in or model load fails the run: replacing it would
        # fail the same way (contract: such a worker exits with the code and is never Ready)
        doomed = next(
            (
                p
                for p in workers
                if p.phase == "Failed"
                and EXIT_REASONS.get(p.exit_code or 0) in PERMANENT_TRAINER_REASONS
            ),
            None,
        )
        if phase == "Running" and doomed is not None:
            reason = EXIT_REASONS[doomed.exit_code or 0]
            detail = doomed.message or f"exit code {doomed.exit_code}"
            finish(False, reason, f"{reason}: worker {doomed.name}: {detail}")
        if phase == "Running":
            if launcher is None:
                plan.ensure_auth = not children.auth_ready
                plan.create.append(builders.build_launcher_pod(run, cfg))
            # workers: replace failed ones, scale to the grant
            for p in workers:
                if p.terminal and not p.deleting:
                    plan.delete_pods.append(p.name)
                    plan.events.append(
                        (
                            "Warning",
                            "WorkerReplaced",
                            f"worker {p.name} ended ({p.phase}, exit {p.exit_code}): replacing it",
                        )
                    )
            if len(live) > desired:
                rank0 = st.training.rank0_pod if st.training else None
                for p in _pick_victims(live, len(live) - desired, rank0):
                    plan.delete_pods.append(p.name)
            elif len(live) < desired:
                plan.ensure_auth = not children.auth_ready
                for i in _free_indices(workers, desired - len(live)):
                    plan.create.append(builders.build_worker_pod(run, i, cfg))
            # below min for too long -> fail with a clear reason
            since = from_rfc3339(st.below_min_since)
            if len(ready) < spec.workers.min:
                since = since if since is not None else now
                new["belowMinSince"] = to_rfc3339(since)
                timeout = spec.workers.min_available_timeout_seconds
                if now - since >= timeout:
                    finish(
                        False,
                        REASON_BELOW_MIN,
                        f"only {len(ready)} of the minimum {spec.workers.min} workers were ready "
                        f"for {timeout} s; check pod events (image pull, scheduling, stage-in)",
                    )
                else:
                    plan.requeue_after = min(plan.requeue_after or timeout, since + timeout - now)
            if COND_RUNNING not in conds.new and phase == "Running":
                pulling = next(
                    (p for p in [*live, *launchers] if p.waiting_reason in IMAGE_PULL_REASONS),
                    None,
                )
                if pulling is not None:
                    conds.set(
                        COND_RUNNING,
                        False,
                        REASON_IMAGE_PULL,
                        f"pod {pulling.name}: {pulling.waiting_reason}: {pulling.waiting_message}",
                    )
                elif (
                    launcher is not None
                    and launcher.phase == "Running"
                    and len(ready) >= spec.workers.min
                ):
                    conds.set(COND_RUNNING, True, REASON_TRAINING, f"{len(ready)} workers ready")
                else:
                    conds.set(
                        COND_RUNNING,
                        False,
                        REASON_STARTING,
                        f"{len(ready)} of {desired} workers ready; launcher "
                        f"{launcher.phase if launcher else 'being created'}",
                    )

    if phase in ("Queued", "Suspended", "Pending") or (phase in FINISHED_PHASES and not finished):
        # nothing runs: free every GPU (checkpoints stay in the results bucket)
        for p in children.pods:
            if not p.deleting and p.name not in plan.delete_pods:
                if phase in FINISHED_PHASES and p.role == builders.ROLE_LAUNCHER:
                    continue  # keep the finished launcher for its logs until the TTL
                plan.delete_pods.append(p.name)
        plan.create = []
        plan.ensure_auth = False
    elif finished:
        for p in workers:
            if p.live:
                plan.delete_pods.append(p.name)
        if spec.ttl_seconds_after_finished is not None:
            done = from_rfc3339(st.completion_time) or now
            left = done + spec.ttl_seconds_after_finished - now
            if left <= 0:
                plan.delete_run = True
            else:
                plan.requeue_after = left

    if phase in FINISHED_PHASES:
        desired = 0
    if not finished:
        if phase != "Running":
            conds.set(COND_RUNNING, False, REASON_NOT_RUNNING, message)
        if COND_SUSPENDED not in conds.new:
            conds.set(COND_SUSPENDED, False, REASON_NOT_SUSPENDED)
        if phase not in FINISHED_PHASES:
            conds.set(COND_SUCCEEDED, False, REASON_IN_PROGRESS)
            conds.set(COND_FAILED, False, REASON_IN_PROGRESS)
        current = len(live)
        if phase == "Running" and current != desired:
            conds.set(
                COND_SCALING,
                True,
                REASON_SCALING_UP if desired > current else REASON_SCALING_DOWN,
                f"{current} -> {desired} workers",
            )
        else:
            conds.set(COND_SCALING, False, REASON_STABLE)

    # A Warning Event when admission turns bad (invalid input, preempted, no nodes). Being
    # admitted or queued is visible in status and the printer columns; an Event each would be
    # 10,000 writes when 10,000 runs arrive at once.
    if conds.changed(COND_ADMITTED):
        adm = conds.new[COND_ADMITTED]
        if adm.status == "False" and adm.reason not in (REASON_SUSPENDED, REASON_QUEUED):
            plan.events.append(("Warning", adm.reason, adm.message))

    if desired != (st.desired_workers or 0) and not finished:
        new["lastScaleTime"] = to_rfc3339(now)
    new.update(
        {
            "phase": phase,
            "conditions": conds.dump(),
            "observedGeneration": run.metadata.generation,
            "currentWorkers": len(live) if not finished else 0,
            "desiredWorkers": desired,
            "readyWorkers": len(ready) if not finished else 0,
            "workerSummary": f"{len(live) if not finished else 0}/{desired}",
            "gpus": sum(p.gpus for p in live if p.node) if not finished else 0,
            "selector": builders.selector(run.metadata.name),
        }
    )
    if message:
        new["message"] = message[:256]
    plan.status_patch = _finish_patch(run, new)
    return plan
