"""The TrainingRun controller's view of the cluster: runs, their pods, every GPU pod and the
nodes, kept current by LIST+WATCH streams (`Kube.list_watch`).

Writes' responses go back into this cache at once (the controller does that), so that the next
pass never acts on a view older than its own writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from accordion_operator.api.common import API_VERSION, ObjectMeta
from accordion_operator.api.trainingrun import PLURAL, TrainingRun
from accordion_operator.config import Config
from accordion_operator.core.cache import Store, Watch
from accordion_operator.core.objects import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    resource_version,
)
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.allocator import Node, PodUse, RunRequest, Taint
from accordion_operator.trainingrun.kueue import KUEUE_VERSION, KueueStore
from accordion_operator.trainingrun.observe import (
    PodState,
    parse_run,
    pod_state,
    run_request,
    wants_gpus,
)
from accordion_operator.trainingrun.priority import (
    PriorityClassInfo,
    QuotaInfo,
    class_from,
    fair_share_weight,
    quota_from,
)

log = logging.getLogger("accordion.cache")

#: what the cache watches (the controller acts once all of these are listed)
CORE_WATCHES = (
    Watch("node", "v1", "nodes", namespaced=False),
    Watch("pod", "v1", "pods"),
    Watch("run", API_VERSION, PLURAL),
    Watch("priorityclass", "scheduling.k8s.io/v1", "priorityclasses", namespaced=False),
    Watch("quota", "v1", "resourcequotas"),
    # cluster-wide even in namespaced mode: only a fair-share weight is kept per namespace
    Watch("namespace", "v1", "namespaces", namespaced=False),
)
#: Kueue's kinds, watched only while the cluster serves Kueue's API (`Controller._watch_kueue`):
#: the Workloads the operator made, and the ResourceFlavors whose node labels their pods take
KUEUE_WATCHES = (
    Watch("workload", KUEUE_VERSION, "workloads", selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"),
    Watch("resourceflavor", KUEUE_VERSION, "resourceflavors", namespaced=False),
)
WATCHES = CORE_WATCHES + KUEUE_WATCHES


def node_from(body: Mapping[str, Any], gpu_resource: str) -> Node:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    alloc = (body.get("status") or {}).get("allocatable") or {}
    try:
        gpus = int(alloc.get(gpu_resource, 0))
    except ValueError:
        gpus = 0
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (body.get("status") or {}).get("conditions") or ()
    )
    return Node(
        name=meta.get("name", ""),
        gpus=gpus,
        labels=dict(meta.get("labels") or {}),
        taints=tuple(
            Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", "NoSchedule"))
            for t in spec.get("taints") or ()
        ),
        unschedulable=bool(spec.get("unschedulable")) or not ready,
    )


#: the metadata keys the run model reads (no managedFields, annotations: a kubectl-applied run
#: carries its whole spec again in last-applied-configuration)
_META_KEYS = frozenset(f.alias or n for n, f in ObjectMeta.model_fields.items())


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The run as the cache keeps it: without what the run controller never reads, i.e.
    `status.training.history` (the Experiment controller keeps its own copies of trial runs; 50
    epochs of metrics were 34 KB of ~45 KB per cached run) and metadata the model ignores."""
    meta = body.get("metadata") or {}
    slim = {**body, "metadata": {k: v for k, v in meta.items() if k in _META_KEYS}}
    status = body.get("status")
    training = status.get("training") if isinstance(status, Mapping) else None
    if isinstance(training, Mapping) and "history" in training:
        rest = {k: v for k, v in training.items() if k != "history"}
        slim["status"] = {**status, "training": rest}  # type: ignore[dict-item]
    return slim


@dataclass(frozen=True, slots=True)
class CachedRun:
    """One TrainingRun as the cache holds it: the fields every controller pass reads, and the
    object as compact JSON, parsed into the model only when a pass has to decide the run.

    Why not the parsed model: a TrainingRun with its six conditions is ~17 KB of pydantic
    objects and ~2 KB of JSON; at 10,000 runs that was 170 MB of the operator's memory
    (`benchmarks/operator_memory`). A pass over settled runs needs only the summary fields;
    parsing the JSON again costs ~45 us for the few runs whose inputs changed."""

    namespace: str
    name: str
    rv: int
    resource_version: str
    uid: str
    #: spec.priorityClassName (resolved to a value per pass: classes change apart from runs)
    priority_class: str | None
    created: str
    phase: str
    #: status.lastScaleTime as written (the operator keeps its own copy: `decide.OwnStatus`)
    last_scale_time: str | None
    #: reconcile.wants_gpus of the model: takes part in allocation
    wants_gpus: bool
    #: status.startTime is set (input checks apply only before the run starts)
    started: bool
    #: status.observedGeneration is the current generation: the operator has acted on this spec
    decided: bool
    #: the allocator's input, derived once per version of the run
    request: RunRequest | None
    labels: Mapping[str, str]
    #: names of the credentials Secrets the spec refers to
    secret_names: tuple[str, ...]
    #: the slimmed object, compact JSON
    raw: bytes
    #: (reason, message) when the object does not parse (a value the schema lets through)
    invalid: tuple[str, str] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def model(self) -> TrainingRun:
        """The parsed run (only valid runs are ever parsed: `invalid` is None)."""
        return TrainingRun.model_validate_json(self.raw)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.raw)
        return body

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CachedRun:
        slim = _slim(body)
        # stdlib json, not orjson: orjson's bytes keep their 64 KB write buffer allocated
        raw = json.dumps(slim, separators=(",", ":")).encode()
        parsed = parse_run(slim)
        if isinstance(parsed, TrainingRun):
            meta, spec, st = parsed.metadata, parsed.spec, parsed.status
            secrets = {spec.results.credentials_secret.name}
            if spec.data is not None:
                secrets.add(spec.data.credentials_secret.name)
            return cls(
                namespace=meta.namespace,
                name=meta.name,
                rv=resource_version(body),
                resource_version=meta.resource_version,
                uid=meta.uid,
                priority_class=spec.priority_class_name,
                created=meta.creation_timestamp or "",
                phase=st.phase or "Pending",
                last_scale_time=st.last_scale_time,
                wants_gpus=wants_gpus(parsed),
                started=st.start_time is not None,
                decided=st.observed_generation == meta.generation,
                request=run_request(parsed),
                labels=meta.labels,
                secret_names=tuple(sorted(secrets)),
                raw=raw,
                invalid=None,
            )
        meta = slim["metadata"]
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            rv=resource_version(body),
            resource_version=str(meta.get("resourceVersion", "")),
            uid=str(meta.get("uid", "")),
            priority_class=None,
            created=str(meta.get("creationTimestamp", "")),
            phase=str((slim.get("status") or {}).get("phase") or "Pending"),
            last_scale_time=None,
            wants_gpus=False,
            started=False,
            decided=False,
            request=None,
            labels={},
            secret_names=(),
            raw=raw,
            invalid=parsed,
        )


@dataclass
class ClusterCache(Store):
    """What the controller knows about runs, their pods, all GPU pods and the nodes."""

    cfg: Config
    runs: dict[tuple[str, str], CachedRun] = field(default_factory=dict)
    #: Accordion pods by (namespace, run) -> name -> state
    run_pods: dict[tuple[str, str], dict[str, PodState]] = field(default_factory=dict)
    #: every non-terminal GPU pod, bound or not (node ""): (namespace, name) -> use
    gpu_pods: dict[tuple[str, str], PodUse] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    _pod_rv: dict[tuple[str, str], int] = field(default_factory=dict)
    #: resourceVersion at which a pod was seen DELETED: the response to our own DELETE can
    #: arrive after the watch's DELETED event (a process that is already dead goes at once),
    #: and must not bring the pod back into the cache.
    _pod_gone: dict[tuple[str, str], int] = field(default_factory=dict)
    #: runs seen for the first time so far (a long pass yields to new arrivals)
    arrivals: int = 0
    #: PriorityClasses by name, and ResourceQuotas by namespace -> name (`priority`)
    priority_classes: dict[str, PriorityClassInfo] = field(default_factory=dict)
    quotas: dict[str, dict[str, QuotaInfo]] = field(default_factory=dict)
    #: bumped on every change of either: runs' resolved priorities are cached until it moves
    policy_version: int = 0
    #: fair-share weights of the namespaces that set one other than 1 (`priority`)
    weights: dict[str, float] = field(default_factory=dict)
    #: namespaces being deleted: their runs are going too, and no pod can be created there, so
    #: they are granted nothing (a dying namespace's runs must not hold back another's)
    terminating: set[str] = field(default_factory=set)
    #: namespaces whose weight was refused (logged once per refusal, not per event)
    _bad_weights: dict[str, str] = field(default_factory=dict)
    #: the operator's Kueue Workloads and the ResourceFlavors (`trainingrun.kueue`)
    kueue: KueueStore = field(default_factory=KueueStore)

    # --- feeding -----------------------------------------------------------------------------

    def apply(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], wake: bool = True
    ) -> None:
        """One watch event (or one item of a LIST, event_type None). ``wake=False`` for the
        responses to our own writes: the pass that made them already accounted for them."""
        deleted = event_type == "DELETED"
        if kind == "run":
            self._apply_run(body, deleted)
        elif kind == "pod":
            self._apply_pod(body, deleted)
        elif kind == "node":
            self._apply_node(body, deleted)
        elif kind in ("priorityclass", "quota"):
            self._apply_policy(kind, body, deleted)
        elif kind == "namespace":
            self._apply_namespace(body, deleted)
        elif kind in ("workload", "resourceflavor"):
            self.kueue.apply(kind, body, deleted)
        if wake:
            self.dirty.set()

    def _apply_run(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        old = self.runs.get(key)
        rv = resource_version(body)
        if deleted:
            self.runs.pop(key, None)
            return
        if old is None:
            self.arrivals += 1
        if old is not None and rv and rv < old.rv:
            return  # an older copy than the one we hold (e.g. a LIST racing our own patch)
        try:
            self.runs[key] = CachedRun.of(body)
        except Exception:  # one object's shape must never stop the watch
            # CachedRun.of reports what the models reject; anything else it raises is a shape
            # nobody foresaw, and the watch must go on for every other run: this one is left out
            # (logged) until a new version of it parses.
            log.exception("TrainingRun %s/%s could not be read; ignored", *key)
            self.runs.pop(key, None)

    def _apply_pod(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        rv = resource_version(body)
        if not deleted and rv and rv < self._pod_rv.get(key, 0):
            return
        if not deleted and key in self._pod_gone:
            if rv and rv <= self._pod_gone[key]:
                return  # a copy from before its deletion
            del self._pod_gone[key]  # a new pod of the same name
        state = pod_state(body, self.cfg.gpu_resource)
        labels = meta.get("labels") or {}
        run = labels.get(builders.LABEL_RUN)
        ours = run is not None and labels.get(LABEL_MANAGED_BY) == MANAGED_BY
        if deleted:
            self._pod_rv.pop(key, None)
            self._pod_gone[key] = rv
            self.gpu_pods.pop(key, None)
            if ours:
                pods = self.run_pods.get((key[0], run or ""))
                if pods is not None:
                    pods.pop(key[1], None)
                    if not pods:
                        self.run_pods.pop((key[0], run or ""), None)
            return
        self._pod_rv[key] = rv
        if state.gpus and not state.terminal:
            # unbound ones too: their namespace's quotas counted them when they were created
            owner = f"{key[0]}/{run}" if ours else None
            pclass = (body.get("spec") or {}).get("priorityClassName") or None
            self.gpu_pods[key] = PodUse(
                state.node or "", state.gpus, owner, state.owner_uid, key[0], pclass
            )
        else:
            self.gpu_pods.pop(key, None)
        if ours:
            self.run_pods.setdefault((key[0], run or ""), {})[key[1]] = state

    def _apply_node(self, body: Mapping[str, Any], deleted: bool) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        if deleted:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = node_from(body, self.cfg.gpu_resource)

    def _apply_policy(self, kind: str, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        if kind == "priorityclass":
            if deleted:
                self.priority_classes.pop(name, None)
            else:
                self.priority_classes[name] = class_from(body)
        else:
            ns = str(meta.get("namespace", ""))
            if deleted:
                self.quotas.get(ns, {}).pop(name, None)
            else:
                quota = quota_from(body)
                if self.quotas.get(ns, {}).get(name) == quota:
                    return  # only its status.used moved (each pod created or deleted)
                self.quotas.setdefault(ns, {})[name] = quota
        self.policy_version += 1

    def _apply_namespace(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        if not deleted and (
            meta.get("deletionTimestamp")
            or (body.get("status") or {}).get("phase") == "Terminating"
        ):
            self.terminating.add(name)
        else:
            self.terminating.discard(name)
        weight, refused = (1.0, None) if deleted else fair_share_weight(meta)
        if refused is None:
            self._bad_weights.pop(name, None)
        elif self._bad_weights.get(name) != refused:  # once per value, not per event
            self._bad_weights[name] = refused
            log.warning("namespace %s: %s", name, refused)
        if weight == 1.0:
            self.weights.pop(name, None)
        else:
            self.weights[name] = weight

    def forget_missing(
        self, kind: str, seen: set[tuple[str, str]], namespace: str | None, newest: int
    ) -> None:
        """After a full LIST of `namespace` (None: all) whose objects were `seen`: drop the rest
        (the list is the truth for runs, pods and nodes, so `newest` is not needed)."""

        def in_scope(ns: str) -> bool:
            return namespace is None or ns == namespace

        if kind == "run":
            for key in list(self.runs):
                if key not in seen and in_scope(key[0]):
                    del self.runs[key]
        elif kind == "pod":
            # a LIST is the truth: tombstones older than it are no longer needed
            self._pod_gone = {k: v for k, v in self._pod_gone.items() if not in_scope(k[0])}
            for key in list(self._pod_rv):
                if key not in seen and in_scope(key[0]):
                    self.gpu_pods.pop(key, None)
                    self._pod_rv.pop(key, None)
            for rk, pods in list(self.run_pods.items()):
                if not in_scope(rk[0]):
                    continue
                for name in list(pods):
                    if (rk[0], name) not in seen:
                        del pods[name]
                if not pods:
                    del self.run_pods[rk]
        elif kind == "node":
            names = {name for _, name in seen}
            for name in list(self.nodes):
                if name not in names:
                    del self.nodes[name]
        elif kind == "priorityclass":
            names = {name for _, name in seen}
            self.priority_classes = {n: c for n, c in self.priority_classes.items() if n in names}
            self.policy_version += 1
        elif kind == "namespace":
            names = {name for _, name in seen}
            self.weights = {n: w for n, w in self.weights.items() if n in names}
            self.terminating &= names
            self._bad_weights = {n: m for n, m in self._bad_weights.items() if n in names}
        elif kind in ("workload", "resourceflavor"):
            self.kueue.forget_missing(kind, seen, namespace)
        elif kind == "quota":
            for ns, quotas in self.quotas.items():
                if in_scope(ns):
                    self.quotas[ns] = {n: q for n, q in quotas.items() if (ns, n) in seen}
            self.policy_version += 1
        self.dirty.set()

    # --- reading ---------------------------------------------------------------------------------

    def pods_of(self, namespace: str, run: str) -> list[PodState]:
        return list(self.run_pods.get((namespace, run), {}).values())
