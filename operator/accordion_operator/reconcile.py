"""Reconcile a TrainingRun: observed run + children + the allocator's grant -> a plan.

Pure functions only. `decide_run` re-derives everything from what it is given (level-based), so
calling it again after a crash, with the same observations, gives the same plan; creations use
deterministic names (the apiserver refuses duplicates) and deletions are by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from accordion_operator import builders
from accordion_operator.allocator import (
    Placement,
    Requirement,
    RunRequest,
    Toleration,
)
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
    HPARAM_NAME_PATTERN,
    PERMANENT_TRAINER_REASONS,
    REASON_BACKOFF_LIMIT,
    REASON_BELOW_MIN,
    REASON_COMPLETED,
    REASON_GANG_ADMITTED,
    REASON_IMAGE_PULL,
    REASON_IN_PROGRESS,
    REASON_INVALID_HPARAMS,
    REASON_LAUNCHER_BACKOFF,
    REASON_NOT_RUNNING,
    REASON_NOT_SUSPENDED,
    REASON_QUEUED,
    REASON_SCALING_DOWN,
    REASON_SCALING_UP,
    REASON_SECRET_INVALID,
    REASON_SECRET_MISSING,
    REASON_STABLE,
    REASON_STARTING,
    REASON_SUSPENDED,
    REASON_TRAINING,
    REASON_UNKNOWN_MODEL,
    TrainingRun,
)
from accordion_operator.config import Config

#: exit codes of the trainer (contract) -> condition reason
EXIT_REASONS = {
    1: "TrainingError",
    10: "DataUnreachable",
    11: "DataAccessDenied",
    12: "DataNotFound",
    13: "DataUnreadable",
    14: "ModelInvalid",
}
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
_HPARAM_NAME = re.compile(HPARAM_NAME_PATTERN)


# --- time ----------------------------------------------------------------------------------------


def to_rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(s: str | None) -> float | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# --- observed state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodState:
    """What the operator needs to know of one child pod."""

    name: str
    run: str
    role: str
    index: int | None
    phase: str
    ready: bool
    node: str | None
    deleting: bool
    gpus: int
    exit_code: int | None = None
    message: str = ""
    waiting_reason: str | None = None
    waiting_message: str = ""
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        return not self.terminal and not self.deleting


def pod_gpus(spec: Mapping[str, Any], resource: str) -> int:
    total = 0
    for c in spec.get("containers") or ():
        req = (c.get("resources") or {}).get("requests") or {}
        lim = (c.get("resources") or {}).get("limits") or {}
        value = req.get(resource, lim.get(resource))
        if value is not None:
            try:
                total += int(value)
            except ValueError:
                continue
    return total


def pod_state(body: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> PodState:
    """Parse a pod (a dict as the apiserver returns it)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    lbl = meta.get("labels") or {}
    index_label = lbl.get(builders.LABEL_INDEX)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    exit_code: int | None = None
    message = ""
    waiting_reason: str | None = None
    waiting_message = ""
    finished_at: float | None = None
    for cs in status.get("containerStatuses") or ():
        state = cs.get("state") or {}
        if "terminated" in state:
            term = state["terminated"]
            exit_code = term.get("exitCode")
            message = (term.get("message") or "").strip()
            finished_at = from_rfc3339(term.get("finishedAt"))
        elif "waiting" in state:
            waiting_reason = state["waiting"].get("reason")
            waiting_message = state["waiting"].get("message") or ""
    return PodState(
        name=meta.get("name", ""),
        run=lbl.get(builders.LABEL_RUN, ""),
        role=lbl.get(builders.LABEL_ROLE, ""),
        index=int(index_label) if index_label and index_label.isdigit() else None,
        phase=status.get("phase") or "Pending",
        ready=ready,
        node=spec.get("nodeName"),
        deleting=bool(meta.get("deletionTimestamp")),
        gpus=pod_gpus(spec, gpu_resource),
        exit_code=exit_code,
        message=message[:1024],
        waiting_reason=waiting_reason,
        waiting_message=waiting_message[:512],
        finished_at=finished_at,
    )


@dataclass(frozen=True)
class Children:
    """A run's observed children."""

    pods: Sequence[PodState] = ()
    #: names of the auth objects that exist: ssh Secret, ServiceAccount, Role, RoleBinding
    auth_ready: bool = False


@dataclass(frozen=True)
class SecretInfo:
    """A credentials Secret as observed: None when missing, else its keys."""

    keys: frozenset[str]


# --- validation beyond the schema ----------------------------------------------------------------


def check_run(
    run: TrainingRun, secrets: Mapping[str, SecretInfo | None], cfg: Config
) -> tuple[str, str] | None:
    """What the apiserver cannot check: (reason, actionable message), or None when fine."""
    spec = run.spec
    if spec.model.builtin is not None and spec.model.builtin not in cfg.builtin_models:
        return (
            REASON_UNKNOWN_MODEL,
            f"spec.model.builtin {spec.model.builtin!r} is not a built-in model; "
            f"choose one of: {', '.join(cfg.builtin_models)}",
        )
    for name, value in spec.hyperparameters.items():
        if not _HPARAM_NAME.match(name) or len(name) > 63:
            return (
                REASON_INVALID_HPARAMS,
                f"hyperparameter name {name!r} must match {HPARAM_NAME_PATTERN} "
                "(at most 63 characters)",
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return (
                REASON_INVALID_HPARAMS,
                f"hyperparameter {name!r} must be a string or a number, not {type(value).__name__}",
            )
        if isinstance(value, float) and not math.isfinite(value):
            return REASON_INVALID_HPARAMS, f"hyperparameter {name!r} must be finite"
    stores = [("spec.results", spec.results)]
    if spec.data is not None:
        stores.insert(0, ("spec.data", spec.data))
    for where, store in stores:
        name = store.credentials_secret.name
        info = secrets.get(name)
        if info is None:
            return (
                REASON_SECRET_MISSING,
                f"{where}.credentialsSecret: Secret {run.metadata.namespace}/{name} not found; "
                f"create it with keys {builders.ACCESS_KEY} and {builders.SECRET_KEY}",
            )
        missing = {builders.ACCESS_KEY, builders.SECRET_KEY} - info.keys
        if missing:
            return (
                REASON_SECRET_INVALID,
                f"{where}.credentialsSecret: Secret {run.metadata.namespace}/{name} lacks "
                f"key(s) {', '.join(sorted(missing))}",
            )
    return None


def parse_run(body: Mapping[str, Any]) -> TrainingRun | tuple[str, str]:
    """The run model, or (reason, message) when a value the schema lets through is bad."""
    from pydantic import ValidationError

    try:
        return TrainingRun.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        reason = REASON_INVALID_HPARAMS if "hyperparameters" in where else "InvalidSpec"
        return reason, f"{where}: {first['msg']}"


# --- allocator input -----------------------------------------------------------------------------


def placement_of(run: TrainingRun) -> Placement:
    spec = run.spec
    terms: tuple[tuple[Requirement, ...], ...] = ()
    na = spec.affinity.node_affinity if spec.affinity else None
    if na and na.required_during_scheduling_ignored_during_execution:
        terms = tuple(
            tuple(Requirement(e.key, e.operator, tuple(e.values)) for e in t.match_expressions)
            for t in na.required_during_scheduling_ignored_during_execution.node_selector_terms
        )
    return Placement(
        node_selector=tuple(sorted(spec.node_selector.items())),
        tolerations=tuple(
            Toleration(t.key, t.operator, t.value, t.effect) for t in spec.tolerations
        ),
        required_terms=terms,
    )


def wants_gpus(run: TrainingRun) -> bool:
    """Whether the run takes part in allocation (valid runs are filtered by the caller)."""
    st = run.status
    return (
        not run.metadata.deletion_timestamp
        and not run.spec.suspend
        and st.phase not in FINISHED_PHASES
    )


def run_request(run: TrainingRun) -> RunRequest:
    st = run.status
    w = run.spec.workers
    admitted = _condition(run, COND_ADMITTED)
    previous = st.desired_workers or 0 if admitted and admitted.status == "True" else 0
    return RunRequest(
        key=run.key,
        priority=run.spec.priority,
        created=from_rfc3339(run.metadata.creation_timestamp) or 0.0,
        min=w.min,
        max=w.max,
        requested=w.requested,
        gpus_per_worker=w.gpus_per_worker,
        placement=placement_of(run),
        previous=previous,
        last_scale=from_rfc3339(st.last_scale_time),
    )


# --- the plan ------------------------------------------------------------------------------------


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


def _condition(run: TrainingRun, ctype: str) -> Condition | None:
    return next((c for c in run.status.conditions if c.type == ctype), None)


class Conditions:
    """A status' conditions being rebuilt: keeps a condition's lastTransitionTime while its
    status holds, and dumps them in a fixed order (TrainingRun's and Experiment's)."""

    def __init__(
        self, old: Iterable[Condition], generation: int | None, now: float, order: Sequence[str]
    ) -> None:
        self.old = {c.type: c for c in old}
        self.new: dict[str, Condition] = {}
        self.now = now
        self.generation = generation
        self.order = order

    def set(self, ctype: str, status: bool, reason: str, message: str = "") -> None:
        value = "True" if status else "False"
        old = self.old.get(ctype)
        since = (
            old.last_transition_time
            if old is not None and old.status == value
            else to_rfc3339(self.now)
        )
        self.new[ctype] = Condition(
            type=ctype,
            status=value,
            reason=reason,
            message=message[:1024],
            last_transition_time=since,
            observed_generation=self.generation,
        )

    def changed(self, ctype: str) -> bool:
        old, new = self.old.get(ctype), self.new.get(ctype)
        return new is not None and (
            old is None or (old.status, old.reason) != (new.status, new.reason)
        )

    def dump(self) -> list[dict[str, Any]]:
        return [
            self.new[t].model_dump(by_alias=True, exclude_none=True)
            for t in self.order
            if t in self.new
        ]


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
