"""What the TrainingRun decisions read of the cluster (pure): child pods as `PodState`, the run
model parsed from its body, and the allocator's view of the run (`run_request`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accordion_operator.api.common import Condition
from accordion_operator.api.trainingrun import (
    COND_ADMITTED,
    FINISHED_PHASES,
    REASON_INVALID_HPARAMS,
    REASON_PREEMPTED,
    TrainingRun,
)
from accordion_operator.core.objects import LABEL_MANAGED_BY, MANAGED_BY
from accordion_operator.core.timefmt import from_rfc3339
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.allocator import Placement, Requirement, RunRequest, Toleration

#: exit codes of the trainer (contract) -> condition reason
EXIT_REASONS = {
    1: "TrainingError",
    10: "DataUnreachable",
    11: "DataAccessDenied",
    12: "DataNotFound",
    13: "DataUnreadable",
    14: "ModelInvalid",
    15: "TrainingDiverged",
}


IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


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
    #: uid of the pod's controller ownerReference ("" when none): only a pod whose controller is
    #: the run itself counts as the run's child; labels alone can be copied by anyone
    owner_uid: str = ""
    #: when the pod last turned Ready (its Ready condition's lastTransitionTime)
    ready_since: float | None = None
    #: metadata.creationTimestamp, which only the apiserver sets
    created: float | None = None
    #: a launcher's ACCORDION_MAX_WORKERS, horovodrun's --max-np: fixed when the pod was created,
    #: while spec.workers.max may have grown since
    max_workers: int | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        return not self.terminal and not self.deleting

    @property
    def hosts_worker(self) -> bool:
        """A launcher that is its run's worker 0 as well (builders._hosting_launcher_pod)."""
        return self.role == builders.ROLE_LAUNCHER and self.index is not None


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
    ready_cond = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    ready_since = (
        from_rfc3339(ready_cond.get("lastTransitionTime")) if ready_cond and ready else None
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
        owner_uid=controller_uid(meta),
        ready_since=ready_since,
        created=from_rfc3339(meta.get("creationTimestamp")),
        max_workers=_max_workers(spec)
        if lbl.get(builders.LABEL_ROLE) == builders.ROLE_LAUNCHER
        else None,
    )


def _max_workers(spec: Mapping[str, Any]) -> int | None:
    for c in spec.get("containers") or ():
        for e in c.get("env") or ():
            value = str(e.get("value") or "")
            if e.get("name") == "ACCORDION_MAX_WORKERS" and value.isdigit():
                return int(value)
    return None


def controller_uid(meta: Mapping[str, Any]) -> str:
    """The uid of an object's controller ownerReference, or "" when it has none."""
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return str(ref.get("uid") or "")
    return ""


def orphan_of_ours(meta: Mapping[str, Any]) -> bool:
    """A pod the operator made (its labels say so) whose run is gone: no controller left."""
    labels = meta.get("labels") or {}
    ours = labels.get(LABEL_MANAGED_BY) == MANAGED_BY and builders.LABEL_RUN in labels
    return ours and not controller_uid(meta)


def owned(pods: Iterable[PodState], uid: str) -> tuple[list[PodState], list[PodState]]:
    """(the run's own children, lookalikes): pods carrying the run's labels whose controller is
    not the run (created by someone else, or left behind by a deleted run of the same name)."""
    mine: list[PodState] = []
    others: list[PodState] = []
    for p in pods:
        (mine if uid and p.owner_uid == uid else others).append(p)
    return mine, others


@dataclass(frozen=True)
class Children:
    """A run's observed children."""

    pods: Sequence[PodState] = ()
    #: names of the auth objects that exist: ssh Secret, ServiceAccount, Role, RoleBinding
    auth_ready: bool = False
    #: why the apiserver refused the last creation of a child ("" when it did not)
    create_error: str = ""


@dataclass(frozen=True)
class SecretInfo:
    """A credentials Secret as observed: None when missing, else its keys."""

    keys: frozenset[str]
    #: its resourceVersion: a changed Secret is probed again by the storage preflight
    resource_version: str = ""


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
    """The allocator's view of the run at priority 0: its PriorityClass is resolved per pass
    (`priority.resolve`), as classes come and go independently of the run."""
    st = run.status
    w = run.spec.workers
    admitted = _condition(run, COND_ADMITTED)
    previous = st.desired_workers or 0 if admitted and admitted.status == "True" else 0
    return RunRequest(
        key=run.key,
        uid=run.metadata.uid,
        namespace=run.metadata.namespace,
        priority=0,
        created=from_rfc3339(run.metadata.creation_timestamp) or 0.0,
        min=w.min,
        max=w.max,
        requested=w.requested,
        gpus_per_worker=w.gpus_per_worker,
        placement=placement_of(run),
        previous=previous,
        last_scale=from_rfc3339(st.last_scale_time),
        preempted=admitted is not None
        and admitted.status == "False"
        and admitted.reason == REASON_PREEMPTED,
    )


def _condition(run: TrainingRun, ctype: str) -> Condition | None:
    return next((c for c in run.status.conditions if c.type == ctype), None)
