"""Kueue admission for TrainingRuns labelled `kueue.x-k8s.io/queue-name` (pure).

Such a run is admitted by Kueue instead of the allocator's gang-minimum step. The operator asks
Kueue for the run's GPUs through `Workload` objects it owns (garbage-collected with the run):

- first one Workload for the minimum: a `launcher` pod set (1 pod) and a `workers` pod set
  (`spec.workers.min` pods), with their requests, node selector, tolerations, affinity and
  priority; no pod starts before Kueue admits it (condition `Admitted`);
- then growth (and shrinking) by *workload slices*: a new Workload for the run's requested
  worker count, annotated `kueue.x-k8s.io/workload-slice-replacement-for: <ns>/<old>`. With
  Kueue's `ElasticJobsViaWorkloadSlices` feature gate the scheduler admits it counting the old
  slice's quota as its own and finishes the old slice in the same step; without the gate it is a
  plain Workload that needs room for its whole count beside the old one. Either way the operator
  starts the extra workers only once the new slice is admitted and then deletes the old slice,
  so a run never holds pods that Kueue's quota did not count;
- when Kueue evicts the admitted slice (preemption, a stopped ClusterQueue, ...), every pod of
  the run goes, the evicted Workload is deleted (which releases its quota at once) and a new one
  for the minimum queues again; the run resumes from its last checkpoint when readmitted;
- a run that finishes, is suspended or becomes invalid has its Workloads deleted.

Pods take the node labels and tolerations of the ResourceFlavors Kueue assigned to their pod
set (as Kueue's own job integrations do). `decide_workloads` is the policy, a function of the
run, its observed Workloads and the flavors; `KueueStore` is what the controller's cache keeps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.trainingrun import (
    COND_ADMITTED,
    FINISHED_PHASES,
    TrainingRun,
)
from accordion_operator.config import Config
from accordion_operator.core.objects import (
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    TRAININGRUNS,
    owner_reference,
)
from accordion_operator.core.timefmt import from_rfc3339
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.allocator import Grant

#: the label that hands a run to Kueue: its value names a LocalQueue of the run's namespace
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
#: Kueue's API version the operator speaks (the storage version of Kueue v0.17)
KUEUE_VERSION = "kueue.x-k8s.io/v1beta2"
#: a new slice names the slice it replaces (`<namespace>/<name>`)
ANNOTATION_REPLACES = "kueue.x-k8s.io/workload-slice-replacement-for"
#: marks a Workload as elastic (what Kueue's own integrations set on theirs)
ANNOTATION_ELASTIC = "kueue.x-k8s.io/elastic-job"
POD_SET_LAUNCHER = "launcher"
POD_SET_WORKERS = "workers"

#: Admitted=True: Kueue admitted the run's Workload
REASON_KUEUE_ADMITTED = "AdmittedByKueue"
#: Admitted=False: the run's Workload waits in its Kueue queue (the message is Kueue's)
REASON_KUEUE_PENDING = "WaitingForKueue"
#: Admitted=False: the run is labelled for Kueue but the cluster does not serve Kueue's API
REASON_KUEUE_UNAVAILABLE = "KueueUnavailable"
#: Admitted=False: the label's value cannot name a LocalQueue
REASON_INVALID_QUEUE = "InvalidQueueName"
#: Admitted=False after an eviction: "EvictedByKueue" + Kueue's reason (`EvictedByKueuePreempted`,
#: `EvictedByKueueClusterQueueStopped`, ...), kept until the run is admitted again
REASON_EVICTED_PREFIX = "EvictedByKueue"

_TOLERATION_KEYS = ("key", "operator", "value", "effect")
_QUEUE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REASON_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


def queue_of(labels: Mapping[str, str]) -> str | None:
    """The LocalQueue a run asks for (None: the run is the allocator's)."""
    return labels.get(LABEL_QUEUE)


def workload_name(run: str, workers: int) -> str:
    """The deterministic name of the run's slice of `workers` workers (the apiserver refuses a
    second creation)."""
    return f"{run}-kueue-{workers}"


# --- what is observed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadState:
    """What the operator needs to know of one of its Workloads."""

    name: str
    #: the run (its name) and the uid of the Workload's controller (the run's, if ours)
    run: str
    owner_uid: str
    workers: int
    created: float
    #: Kueue's Admitted=True: pods may start
    admitted: bool
    #: Finished=True (a replaced slice): no longer counts, the operator deletes it
    finished: bool = False
    #: being deleted (a deletionTimestamp)
    deleting: bool = False
    #: the slice it replaces (`ANNOTATION_REPLACES`, its name only)
    replaces: str | None = None
    #: spec.queueName: the LocalQueue it was submitted to
    queue: str = ""
    #: (reason, message) of Evicted=True
    evicted: tuple[str, str] | None = None
    #: why it is not admitted yet (QuotaReserved/Admitted=False message; "" when none)
    pending: str = ""
    #: the ClusterQueue it is admitted to
    cluster_queue: str = ""
    #: per pod set: the ResourceFlavors Kueue assigned to it
    flavors: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Flavor:
    """A ResourceFlavor: what pods admitted in it must carry."""

    name: str
    node_labels: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, str], ...], ...] = ()


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and isinstance(c.get("type"), str):
            out[c["type"]] = c
    return out


def _true(conds: Mapping[str, Mapping[str, Any]], ctype: str) -> bool:
    return conds.get(ctype, {}).get("status") == "True"


def workload_state(body: Mapping[str, Any]) -> WorkloadState:
    """Parse a Workload as the apiserver returns it."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    conds = _conditions(status)
    workers = 0
    for ps in spec.get("podSets") or ():
        if isinstance(ps, Mapping) and ps.get("name") == POD_SET_WORKERS:
            workers = int(ps.get("count") or 0)
    owner = ""
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            owner = str(ref.get("uid") or "")
    replaces = (meta.get("annotations") or {}).get(ANNOTATION_REPLACES)
    evicted = None
    if _true(conds, "Evicted"):
        ev = conds["Evicted"]
        evicted = (str(ev.get("reason") or ""), str(ev.get("message") or ""))
    pending = ""
    for ctype in ("QuotaReserved", "Admitted"):  # why no quota, else why not admitted yet
        c = conds.get(ctype)
        if c is not None and c.get("status") == "False" and c.get("message"):
            pending = str(c["message"])
            break
    admission = status.get("admission") or {}
    flavors = tuple(
        (
            str(a.get("name") or ""),
            tuple(sorted({str(f) for f in (a.get("flavors") or {}).values()})),
        )
        for a in admission.get("podSetAssignments") or ()
        if isinstance(a, Mapping)
    )
    return WorkloadState(
        name=str(meta.get("name") or ""),
        run=str((meta.get("labels") or {}).get(builders.LABEL_RUN) or ""),
        owner_uid=owner,
        workers=workers,
        created=from_rfc3339(meta.get("creationTimestamp")) or 0.0,
        admitted=_true(conds, "Admitted") and bool(admission),
        finished=_true(conds, "Finished"),
        deleting=bool(meta.get("deletionTimestamp")),
        replaces=replaces.rsplit("/", 1)[-1] if isinstance(replaces, str) else None,
        queue=str(spec.get("queueName") or ""),
        evicted=evicted,
        pending=pending[:512],
        cluster_queue=str(admission.get("clusterQueue") or ""),
        flavors=flavors,
    )


def flavor_of(body: Mapping[str, Any]) -> Flavor:
    """Parse a ResourceFlavor."""
    spec = body.get("spec") or {}
    labels = spec.get("nodeLabels") or {}
    return Flavor(
        name=str((body.get("metadata") or {}).get("name") or ""),
        node_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        # tolerationSeconds left out: it only bounds NoExecute evictions of running pods
        tolerations=tuple(
            tuple(sorted((k, str(t[k])) for k in _TOLERATION_KEYS if t.get(k) is not None))
            for t in spec.get("tolerations") or ()
            if isinstance(t, Mapping)
        ),
    )


@dataclass
class KueueStore:
    """The Workloads the operator made (by namespace and run) and the ResourceFlavors, kept by
    the controller's cache; `served`: whether the cluster serves Kueue's API (None: not known
    yet, the first probe has not answered)."""

    workloads: dict[tuple[str, str], dict[str, WorkloadState]] = field(default_factory=dict)
    flavors: dict[str, Flavor] = field(default_factory=dict)
    served: bool | None = None
    #: bumped on every change of a ResourceFlavor (decisions are cached until it moves)
    flavors_version: int = 0

    def apply(self, kind: str, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if kind == "resourceflavor":
            if deleted:
                self.flavors.pop(name, None)
            else:
                self.flavors[name] = flavor_of(body)
            self.flavors_version += 1
            return
        state = workload_state(body)
        key = (str(meta.get("namespace") or ""), state.run)
        if deleted:
            of_run = self.workloads.get(key, {})
            of_run.pop(name, None)
            if not of_run:
                self.workloads.pop(key, None)
        else:
            self.workloads.setdefault(key, {})[name] = state

    def forget_missing(self, kind: str, seen: set[tuple[str, str]], namespace: str | None) -> None:
        if kind == "resourceflavor":
            names = {n for _, n in seen}
            self.flavors = {n: f for n, f in self.flavors.items() if n in names}
            self.flavors_version += 1
            return
        for key, of_run in list(self.workloads.items()):
            if namespace is not None and key[0] != namespace:
                continue
            kept = {n: w for n, w in of_run.items() if (key[0], n) in seen}
            if kept:
                self.workloads[key] = kept
            else:
                del self.workloads[key]

    def of_run(self, namespace: str, run: str, uid: str) -> tuple[WorkloadState, ...]:
        """The run's own Workloads (controlled by its uid), oldest first."""
        found = self.workloads.get((namespace, run), {}).values()
        return tuple(sorted((w for w in found if w.owner_uid == uid), key=_age))


def _age(w: WorkloadState) -> tuple[float, str]:
    return w.created, w.name


# --- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """A Workload to create: `workers` workers, replacing the slice named `replaces`."""

    name: str
    workers: int
    replaces: str | None = None


@dataclass(frozen=True)
class KueueDecision:
    """What Kueue's admission makes of a run: its grant (in place of the allocator's), the
    Workloads to create and delete, and the flavors' node labels and tolerations per pod set."""

    grant: Grant
    create: tuple[Slice, ...] = ()
    delete: tuple[str, ...] = ()
    #: pod set -> node labels its pods must carry (the assigned flavors')
    node_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    #: pod set -> tolerations its pods get (the assigned flavors')
    tolerations: tuple[tuple[str, tuple[tuple[tuple[str, str], ...], ...]], ...] = ()


def target_workers(run: TrainingRun) -> int:
    """The worker count the run asks Kueue for: the requested count within its bounds."""
    w = run.spec.workers
    return max(w.min, min(w.requested, w.max))


def decide_workloads(
    run: TrainingRun,
    workloads: Sequence[WorkloadState],
    flavors: Mapping[str, Flavor],
    *,
    served: bool,
    active: bool,
) -> KueueDecision:
    """The run's Kueue admission. `workloads`: its own (`KueueStore.of_run`); `served`: the
    cluster serves Kueue's API; `active`: the run wants GPUs (valid, not suspended, finished
    or being deleted)."""
    queue = queue_of(run.metadata.labels) or ""
    if not served:
        return KueueDecision(_unavailable(queue))
    stale, live = _sort_out(workloads, queue)
    released = _release(run, live, queue, active=active)
    if released is not None:
        return KueueDecision(released, delete=stale + tuple(w.name for w in live))
    admitted = [w for w in live if w.admitted]
    if not admitted:
        return _queued(run, live, stale, queue)
    return _running(run, admitted, live, stale, flavors)


def _unavailable(queue: str) -> Grant:
    """The refusal of a run labelled for Kueue on a cluster that does not serve Kueue's API."""
    return Grant(
        0,
        REASON_KUEUE_UNAVAILABLE,
        f"the run is labelled {LABEL_QUEUE}={queue} but this cluster does not serve "
        f"Kueue's API ({KUEUE_VERSION} Workloads), or the operator may not list them "
        "(its log says which): install Kueue (or grant the chart's Kueue rules), or "
        "remove the label to have Accordion's allocator admit the run",
    )


def _sort_out(
    workloads: Sequence[WorkloadState], queue: str
) -> tuple[tuple[str, ...], list[WorkloadState]]:
    """Which Workloads are stale (to delete) and which still count for the run (live)."""
    # finished slices, and those of another queue (the label changed: Kueue keeps a Workload's
    # queue while it holds quota, so the run queues again where the label now says)
    stale = tuple(w.name for w in workloads if (w.finished or w.queue != queue) and not w.deleting)
    live = [w for w in workloads if not w.finished and not w.deleting and w.queue == queue]
    return stale, live


def _release(
    run: TrainingRun, live: Sequence[WorkloadState], queue: str, *, active: bool
) -> Grant | None:
    """Whether the run gives up all its Workloads, and the grant that says why (None: no)."""
    if not active or run.status.phase in FINISHED_PHASES:
        return _idle()
    if not _QUEUE_NAME.match(queue) or len(queue) > 253:
        return Grant(
            0,
            REASON_INVALID_QUEUE,
            f"label {LABEL_QUEUE}: {queue!r} is not a LocalQueue name (lowercase letters, "
            "digits, '-' and '.')",
        )
    evicted = next((w for w in live if w.evicted is not None), None)
    if evicted is None:
        return None
    # Kueue took the quota back: every pod goes (decide_run releases them for a grant of
    # 0) and the Workloads with it, so the quota is free at once and a new minimum queues.
    assert evicted.evicted is not None
    kreason, kmessage = evicted.evicted
    word = kreason if _REASON_WORD.match(kreason) else "Evicted"
    return Grant(
        0,
        REASON_EVICTED_PREFIX + word,
        f"Kueue evicted Workload {run.metadata.namespace}/{evicted.name} ({kreason}: "
        f"{kmessage}); the run waits in LocalQueue {queue} to be admitted again and "
        "resumes from its last checkpoint",
    )


def _running(
    run: TrainingRun,
    admitted: list[WorkloadState],
    live: Sequence[WorkloadState],
    stale: tuple[str, ...],
    flavors: Mapping[str, Flavor],
) -> KueueDecision:
    """An admitted slice: the grant it gives and the slices that resize it to the request."""
    current = _current_slice(admitted)
    older = tuple(w.name for w in admitted if w is not current)
    want = target_workers(run)
    pending = [w for w in live if not w.admitted]
    keep, create = _resize(run, current, pending, want)
    delete = stale + older + tuple(w.name for w in pending if w is not keep)
    if create and create[0].name in delete:
        # a slice of that size exists but replaces another one: it goes first, the new one
        # comes next pass
        create = ()
    labels, tols = _placement(current, flavors)
    return KueueDecision(
        Grant(current.workers, REASON_KUEUE_ADMITTED, _admitted_message(run, current, want, keep)),
        create=create,
        delete=delete,
        node_labels=labels,
        tolerations=tols,
    )


def _current_slice(admitted: list[WorkloadState]) -> WorkloadState:
    """Which admitted slice holds the run's quota: the newest one no other one replaces."""
    # the replacement chain, not the order by age alone: creation times have 1 s steps
    replaced = {w.replaces for w in admitted}
    return ([w for w in admitted if w.name not in replaced] or admitted)[-1]


def _resize(
    run: TrainingRun, current: WorkloadState, pending: Sequence[WorkloadState], want: int
) -> tuple[WorkloadState | None, tuple[Slice, ...]]:
    """Which pending slice of `want` workers replacing `current` to keep, else which to create."""
    if want == current.workers:
        return None, ()
    keep = next((w for w in pending if w.workers == want and w.replaces == current.name), None)
    if keep is not None:
        return keep, ()
    return None, (Slice(workload_name(run.metadata.name, want), want, current.name),)


def _admitted_message(
    run: TrainingRun, current: WorkloadState, want: int, keep: WorkloadState | None
) -> str:
    """What the Admitted condition says of the admitted slice and of a resize Kueue holds."""
    gpus = current.workers * run.spec.workers.gpus_per_worker
    message = (
        f"admitted by Kueue in ClusterQueue {current.cluster_queue or '?'} (Workload "
        f"{current.name}): {current.workers} workers ({gpus} GPUs)"
    )
    if want != current.workers:
        message += f"; a slice of {want} workers waits for Kueue"
        if keep is not None and keep.pending:
            message += f": {keep.pending}"
    return message


def _idle() -> Grant:
    return Grant(0, REASON_KUEUE_PENDING, "")


def _queued(
    run: TrainingRun, live: list[WorkloadState], stale: tuple[str, ...], queue: str
) -> KueueDecision:
    """No admitted slice: one Workload for the minimum waits in the queue."""
    w = run.spec.workers
    first = next((x for x in live if x.workers == w.min and x.replaces is None), None)
    delete = stale + tuple(x.name for x in live if x is not first)
    create = () if first is not None else (Slice(workload_name(run.metadata.name, w.min), w.min),)
    if create and create[0].name in delete:
        create = ()  # its old namesake goes first
    adm = next((c for c in run.status.conditions if c.type == COND_ADMITTED), None)
    if adm is not None and adm.status == "False" and adm.reason.startswith(REASON_EVICTED_PREFIX):
        # evicted and not admitted since: the status keeps saying why
        return KueueDecision(Grant(0, adm.reason, adm.message), create=create, delete=delete)
    name = first.name if first is not None else workload_name(run.metadata.name, w.min)
    message = f"Workload {name} for the minimum of {w.min} workers waits in LocalQueue {queue}"
    if first is not None and first.pending:
        message += f": {first.pending}"
    return KueueDecision(Grant(0, REASON_KUEUE_PENDING, message), create=create, delete=delete)


def _placement(
    current: WorkloadState, flavors: Mapping[str, Flavor]
) -> tuple[
    tuple[tuple[str, tuple[tuple[str, str], ...]], ...],
    tuple[tuple[str, tuple[tuple[tuple[str, str], ...], ...]], ...],
]:
    """Per pod set: the node labels and tolerations of the flavors Kueue assigned to it (a
    flavor not in the cache adds nothing: Kueue keeps a flavor in use from being deleted)."""
    labels, tols = [], []
    for pod_set, names in current.flavors:
        merged: dict[str, str] = {}
        tol: list[tuple[tuple[str, str], ...]] = []
        for n in names:
            f = flavors.get(n)
            if f is not None:
                merged.update(f.node_labels)
                tol += [t for t in f.tolerations if t not in tol]
        labels.append((pod_set, tuple(sorted(merged.items()))))
        tols.append((pod_set, tuple(tol)))
    return tuple(labels), tuple(tols)


# --- what is created -----------------------------------------------------------------------------


def _template(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod that Kueue's quota and flavor assignment read."""
    spec = pod["spec"]
    keep = ("nodeSelector", "tolerations", "affinity", "priorityClassName")
    return {
        "metadata": {
            "labels": {
                k: v for k, v in pod["metadata"]["labels"].items() if k != builders.LABEL_INDEX
            }
        },
        "spec": {
            **{k: spec[k] for k in keep if k in spec},
            "restartPolicy": spec["restartPolicy"],
            "containers": [
                {"name": c["name"], "image": c["image"], "resources": c["resources"]}
                for c in spec["containers"]
            ],
        },
    }


def build_workload(
    run: TrainingRun, cfg: Config, piece: Slice, priority: int | None
) -> dict[str, Any]:
    """The Workload of one slice of the run: the launcher and `piece.workers` workers, as the
    pods will be made (`builders`), owned by the run. `priority`: the value of the run's
    PriorityClass (None: the run names none)."""
    meta = run.metadata
    annotations = {ANNOTATION_ELASTIC: "true"}
    if piece.replaces is not None:
        annotations[ANNOTATION_REPLACES] = f"{meta.namespace}/{piece.replaces}"
    spec: dict[str, Any] = {
        "queueName": queue_of(meta.labels),
        "podSets": [
            {"name": POD_SET_LAUNCHER, "count": 1, "template": _template(
                builders.build_launcher_pod(run, cfg)
            )},
            {"name": POD_SET_WORKERS, "count": piece.workers, "template": _template(
                builders.build_worker_pod(run, 0, cfg)
            )},
        ],
    }  # fmt: skip
    if run.spec.priority_class_name is not None and priority is not None:
        spec["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": run.spec.priority_class_name,
        }
        spec["priority"] = priority
    return {
        "apiVersion": KUEUE_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": piece.name,
            "namespace": meta.namespace,
            "labels": {
                LABEL_NAME: "accordion",
                LABEL_MANAGED_BY: MANAGED_BY,
                builders.LABEL_RUN: meta.name,
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference(TRAININGRUNS, meta.name, meta.uid)],
        },
        "spec": spec,
    }


def place_pod(obj: dict[str, Any], decision: KueueDecision) -> dict[str, Any]:
    """A pod of the plan with its pod set's flavor node labels and tolerations added (the
    run's own selector wins where both name a key: Kueue only assigned a flavor whose labels
    match it)."""
    if obj.get("kind") != "Pod":
        return obj
    role = obj["metadata"]["labels"].get(builders.LABEL_ROLE)
    pod_set = POD_SET_LAUNCHER if role == builders.ROLE_LAUNCHER else POD_SET_WORKERS
    labels = dict(dict(decision.node_labels).get(pod_set, ()))
    tols = [dict(t) for t in dict(decision.tolerations).get(pod_set, ())]
    if not labels and not tols:
        return obj
    spec = dict(obj["spec"])
    if labels:
        spec["nodeSelector"] = {**labels, **(spec.get("nodeSelector") or {})}
    if tols:
        spec["tolerations"] = [*(spec.get("tolerations") or []), *tols]
    return {**obj, "spec": spec}
