"""The elastic GPU allocator: pure policy, no I/O, no clock (``now`` is an argument).

Given the nodes, every pod's GPU use, the namespaces' GPU quotas and fair-share weights and the
runs that want GPUs, decide how many workers each run gets. The plan is a simulated placement
(best fit, node by node), so a plan never needs more GPUs on a node than the node has, nor more
GPUs in a namespace than its quotas allow; which real node a worker lands on is still the
kube-scheduler's call.

Rules, in the order they are applied:

1. *Gang minimum, priority first.* Runs are visited by priority (high first); within a priority
   the runs already admitted come first (so a newcomer never evicts an equal), then the waiting
   ones in *fair order*: the namespace furthest below its weighted share of the GPUs granted so
   far goes next (ties: the older run), FIFO by creation time within a namespace. A run is
   admitted only if all its ``min`` workers fit, on the nodes and in every ResourceQuota of its
   namespace that counts its pods (``GpuQuota``); a quota short of it gives ``QuotaExceeded``.
   A later, smaller run may still be admitted when an earlier one does not fit (best-effort
   FIFO: a big run does not block the queue behind it).
2. *Elastic surplus last.* Workers above ``min`` are planned only after every admitted run's
   minimum, so the surplus of lower-priority runs is what a higher-priority minimum takes first.
   A lower-priority run loses its minimum (is preempted whole) only when the higher-priority
   minimums do not fit otherwise - the last resort - and its grant says so.
   *Who may preempt whom* (``RunRequest.preempts``, from the run's PriorityClass): an admitted
   run keeps its minimum ahead of every higher priority unless some run that may preempt it is
   present: one of its own namespace (class default), or of any namespace whose class says
   ``cluster``; a ``never`` class preempts nobody. Such protected runs are placed first.
3. *Fair growth.* Within a priority, free GPUs are shared by two-level water-filling: the next
   worker goes to the namespace with the fewest GPUs per unit of weight (all its runs' GPUs,
   minimums included; ``weights``, default 1), and within it to the run with the fewest workers,
   up to its requested count (``spec.workers.replicas`` or ``max``) and its namespace's quotas.
   Surplus levels count a priority above 0 only for classes that may preempt other namespaces:
   otherwise a team's own high class would grow its runs first by taking other teams' surplus.
4. *Hysteresis.* A run whose count changed less than ``cooldown`` seconds ago keeps its previous
   count (as far as GPUs and quotas allow after all minimums) instead of being trimmed for
   fairness, so runs do not oscillate when others come and go. Growth is never delayed.

Quotas: a namespace's GPUs are counted as its quotas count them, from the pods (``PodUse``):
the pods of the runs being planned are re-planned, every other pod of the namespace that a
quota counts (bound or not yet bound: the apiserver charged it at creation) takes its GPUs out
of that quota first.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from accordion_operator.api.trainingrun import (
    REASON_GANG_ADMITTED,
    REASON_PREEMPTED,
    REASON_QUEUED,
    REASON_QUOTA_EXCEEDED,
    REASON_UNSCHEDULABLE,
)

# --- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key is None:  # empty key + Exists tolerates everything
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or (self.value or "") == taint.value


@dataclass(frozen=True)
class Requirement:
    """A node-affinity match expression."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op, value = self.operator, labels.get(self.key)
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if value is None or not self.values:
            return False
        try:
            number, bound = int(value), int(self.values[0])
        except ValueError:
            return False
        return number > bound if op == "Gt" else number < bound


@dataclass(frozen=True)
class Placement:
    """Where a run's workers may go: node selector, tolerations, required node-affinity terms."""

    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    #: OR of terms, each an AND of requirements; empty = any node.
    required_terms: tuple[tuple[Requirement, ...], ...] = ()

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.node_selector, self.tolerations, self.required_terms))

    def __hash__(self) -> int:
        # Placements are dict keys once per run and pass; hashing the nested tuples each time
        # was a fifth of the decision time at 10,000 runs.
        return self._hash

    def admits(self, labels: Mapping[str, str], taints: Iterable[Taint]) -> bool:
        if any(labels.get(k) != v for k, v in self.node_selector):
            return False
        for taint in taints:
            if taint.effect in ("NoSchedule", "NoExecute") and not any(
                t.tolerates(taint) for t in self.tolerations
            ):
                return False
        return not self.required_terms or any(
            all(r.matches(labels) for r in term) for term in self.required_terms
        )


@dataclass(frozen=True)
class Node:
    name: str
    gpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False


@dataclass(frozen=True)
class PodUse:
    """A non-terminal pod that requests GPUs; ``run`` is its run's key if Accordion's, ``owner``
    the uid of its controller (a pod counts as a run's worker only if both match). ``node`` ""
    is a pod not bound yet: it takes no node's GPUs, but its namespace's quotas count it."""

    node: str
    gpus: int
    run: str | None = None
    owner: str = ""
    #: its namespace and spec.priorityClassName: which quotas count it (``GpuQuota``)
    namespace: str = ""
    priority_class: str | None = None


@dataclass(frozen=True)
class RunRequest:
    key: str
    #: the run's uid: its workers are the pods it controls (PodUse.owner)
    uid: str
    priority: int
    created: float
    min: int
    max: int
    requested: int
    gpus_per_worker: int
    placement: Placement = Placement()
    #: workers granted by the previous decision (0 = not admitted)
    previous: int = 0
    #: when the grant last changed (epoch seconds), for the cooldown
    last_scale: float | None = None
    #: whose minimums the run may take when its own does not fit (see module docstring, 2.)
    preempts: Literal["never", "namespace", "cluster"] = "namespace"
    namespace: str = ""
    #: it was preempted and has not been re-admitted since (its refusal keeps saying so)
    preempted: bool = False
    #: the PriorityClass its pods carry: which of its namespace's quotas count them
    priority_class: str | None = None

    @property
    def surplus_level(self) -> int:
        """The priority its surplus competes at (module docstring, 3.)."""
        return self.priority if self.preempts == "cluster" else min(self.priority, 0)

    @property
    def cap(self) -> int:
        return max(self.min, min(self.requested, self.max))


@dataclass(frozen=True)
class GpuQuota:
    """A ResourceQuota's hard limit on the GPUs requested by the pods of one namespace (of some
    priority classes only, when the quota is scoped to classes).

    Which pods it counts, by their priority class ``c`` (None: the pod has none):
    ``(only is None or c in only) and c not in exclude`` (`priority.gpu_quotas` makes these
    from a ResourceQuota's scopes)."""

    namespace: str
    name: str
    #: GPUs (the quota's hard `requests.<gpu resource>`)
    hard: int
    only: frozenset[str | None] | None = None
    exclude: frozenset[str | None] = frozenset()
    #: the quota's resource name, for messages
    resource: str = "requests.nvidia.com/gpu"

    def covers(self, priority_class: str | None) -> bool:
        return (
            self.only is None or priority_class in self.only
        ) and priority_class not in self.exclude


# --- outputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    workers: int
    reason: str
    message: str

    @property
    def admitted(self) -> bool:
        return self.workers > 0


@dataclass
class Allocation:
    grants: dict[str, Grant]
    #: planned GPU use per node (foreign pods + planned workers)
    node_used: dict[str, int]
    #: planned workers per (run, node), for checking a plan against node capacity
    placements: dict[str, dict[str, int]]
    #: GPUs granted per namespace (its runs' workers; other pods not included)
    namespace_gpus: dict[str, int] = field(default_factory=dict)


# --- the capacity model --------------------------------------------------------------------------


class _Capacity:
    """Free GPUs per node, grouped by node class (same labels and taints) and by free amount.

    ``buckets[c][f]`` holds the nodes of class ``c`` with exactly ``f`` free GPUs, so a best-fit
    placement is O(max GPUs per node) per worker and never scans nodes.
    """

    def __init__(self, nodes: Sequence[Node], foreign_use: Mapping[str, int]) -> None:
        self.class_of: dict[tuple[object, ...], int] = {}
        self.class_shape: list[tuple[Mapping[str, str], tuple[Taint, ...]]] = []
        self.buckets: list[list[list[str]]] = []
        self.total: list[list[int]] = []  # allocatable histogram per class (for "never fits")
        self.used: dict[str, int] = {}
        self.free: dict[str, int] = {}
        self.initial_free: dict[str, int] = {}
        self.max_gpus = max((n.gpus for n in nodes), default=0)
        for node in sorted(nodes, key=lambda n: n.name):
            if node.unschedulable or node.gpus < 0:
                continue
            sig = (frozenset(node.labels.items()), node.taints)
            cid = self.class_of.get(sig)
            if cid is None:
                cid = self.class_of[sig] = len(self.class_shape)
                self.class_shape.append((node.labels, node.taints))
                self.buckets.append([[] for _ in range(self.max_gpus + 1)])
                self.total.append([0] * (self.max_gpus + 1))
            used = foreign_use.get(node.name, 0)
            free = max(0, node.gpus - used)
            self.used[node.name] = used
            self.free[node.name] = free
            self.initial_free[node.name] = free
            self.buckets[cid][free].append(node.name)
            self.total[cid][node.gpus] += 1
        for buckets in self.buckets:
            for bucket in buckets:
                bucket.reverse()  # pop() takes the lowest name first: deterministic, readable
        self._eligible: dict[Placement, list[int]] = {}
        #: per class: how many runs may use it (set by decide_allocation; a tie-breaker)
        self.demand: list[int] = [0] * len(self.class_shape)

    def eligible(self, placement: Placement) -> list[int]:
        got = self._eligible.get(placement)
        if got is None:
            got = self._eligible[placement] = [
                cid
                for cid, (labels, taints) in enumerate(self.class_shape)
                if placement.admits(labels, taints)
            ]
        return got

    def could_ever_fit(self, classes: list[int], gpus: int, workers: int) -> bool:
        """Whether ``workers`` fit on the matching nodes if they were empty."""
        room = 0
        for cid in classes:
            hist = self.total[cid]
            for size in range(max(gpus, 1), len(hist)):
                if hist[size]:
                    room += hist[size] * (size // gpus if gpus else workers)
            if gpus == 0 and any(hist):
                room += workers
            if room >= workers:
                return True
        return False

    def take(self, classes: list[int], gpus: int) -> tuple[int, str] | None:
        """Best fit: a node with the fewest free GPUs that still fits; among equals, a node of
        the class the fewest runs can use (a tolerant run takes the tainted node, leaving the
        plain one to runs that have no choice). Returns (class, node)."""
        best: tuple[int, int, int] | None = None
        for cid in classes:
            buckets = self.buckets[cid]
            for free in range(gpus, len(buckets)):
                if buckets[free]:
                    cand = (free, self.demand[cid], cid)
                    if best is None or cand < best:
                        best = cand
                    break
            if best is not None and best[0] == gpus:
                break  # classes come in (demand, id) order: nothing later can beat an exact fit
        if best is None:
            return None
        free, _, cid = best
        node = self.buckets[cid][free].pop()
        self.buckets[cid][free - gpus].append(node)
        self.free[node] = free - gpus
        return cid, node

    def give_back(self, cid: int, node: str, gpus: int) -> None:
        free = self.free[node]
        bucket = self.buckets[cid][free]
        if bucket and bucket[-1] == node:  # the usual case: undone in reverse order
            bucket.pop()
        else:
            bucket.remove(node)
        self.buckets[cid][free + gpus].append(node)
        self.free[node] = free + gpus


# --- the decision --------------------------------------------------------------------------------


def decide_allocation(
    nodes: Sequence[Node],
    pods: Iterable[PodUse],
    runs: Sequence[RunRequest],
    now: float,
    cooldown: float = 30.0,
    *,
    quotas: Sequence[GpuQuota] = (),
    weights: Mapping[str, float] | None = None,
) -> Allocation:
    """Target worker count per run (see the module docstring for the rules). `quotas`: the
    namespaces' GPU quotas; `weights`: fair-share weight per namespace (absent: 1; a weight
    that is not a positive finite number counts as 1)."""
    owners = {(r.key, r.uid) for r in runs}
    quota_order = sorted(quotas, key=lambda q: (q.namespace, q.name, q.hard))
    in_ns: dict[str, list[int]] = {}
    for qi, q in enumerate(quota_order):
        in_ns.setdefault(q.namespace, []).append(qi)
    foreign: dict[str, int] = {}
    quota_foreign = [0] * len(quota_order)
    for pod in pods:
        # Accordion's own workers are re-planned from scratch; everything else is fixed load,
        # a pod that only carries a run's labels included.
        if pod.gpus > 0 and (pod.run is None or (pod.run, pod.owner) not in owners):
            if pod.node:
                foreign[pod.node] = foreign.get(pod.node, 0) + pod.gpus
            for qi in in_ns.get(pod.namespace, ()):
                if quota_order[qi].covers(pod.priority_class):
                    quota_foreign[qi] += pod.gpus
    plan = _Planner(_Capacity(nodes, foreign), runs, weights or {})
    plan.set_quotas(quota_order, in_ns, quota_foreign, runs)
    order = sorted(runs, key=lambda r: (-r.priority, r.previous < r.min, r.created, r.key))
    # 1. gang minimums: first those no present run may preempt, then highest priority first
    protected = _protected(runs)
    admit = plan.admit
    for run in order:
        if run.key in protected:
            admit(run)
    plan.admit_in_fair_order([r for r in order if r.key not in protected])
    # 2.-4. surplus per priority level: cooldown-frozen counts first, then fair water-filling
    levels: dict[int, list[RunRequest]] = {}
    for run in order:
        if run.key in plan.granted:
            levels.setdefault(run.surplus_level, []).append(run)
    for priority in sorted(levels, reverse=True):
        plan.keep_in_cooldown(levels[priority], now, cooldown)
        plan.grow_fairly(levels[priority])
    cap = plan.cap
    node_used = {n: cap.used[n] + cap.initial_free[n] - cap.free[n] for n in cap.used}
    grants: dict[str, Grant] = {}
    limited = plan.quota_limited
    for run in runs:
        n = plan.granted.get(run.key, 0)
        if n:  # inline: the common case, 10,000 times a decision
            gpus = n * run.gpus_per_worker
            msg = f"granted {n} of {run.cap} requested workers ({gpus} GPUs)"
            if limited and run.key in limited and n < run.cap:
                msg += plan.quota_note(limited[run.key])
            grants[run.key] = Grant(n, REASON_GANG_ADMITTED, msg)
        else:
            grants[run.key] = plan.refusal(run)
    return Allocation(
        grants=grants,
        node_used=node_used,
        placements=plan.placements,
        namespace_gpus=dict(plan.ns_gpus),
    )


def _protected(runs: Sequence[RunRequest]) -> set[str]:
    """Admitted runs that no present run may preempt: none of higher priority in their own
    namespace (other than `never` classes) and none of higher priority whose class may preempt
    other namespaces. O(runs); with one priority level, every admitted run."""
    floor = float("-inf")
    top_cluster, top_ns = floor, dict[str, float]()
    for r in runs:
        if r.preempts == "cluster":
            top_cluster = max(top_cluster, r.priority)
        if r.preempts != "never":
            top_ns[r.namespace] = max(top_ns.get(r.namespace, floor), r.priority)
    return {
        r.key
        for r in runs
        if r.previous >= r.min
        and r.priority >= top_cluster
        and r.priority >= top_ns.get(r.namespace, floor)
    }


class _Planner:
    """One decision's working state: the capacity and quotas left, the workers granted and
    placed, and the GPUs granted per namespace."""

    def __init__(
        self, cap: _Capacity, runs: Sequence[RunRequest], weights: Mapping[str, float]
    ) -> None:
        self.cap = cap
        self.granted: dict[str, int] = {}
        self.placements: dict[str, dict[str, int]] = {}
        self.ns_gpus: dict[str, int] = {}
        self.weights = {ns: w for ns, w in weights.items() if w != 1 and w > 0 and math.isfinite(w)}
        # quotas (set_quotas): per quota the GPUs left and those other pods hold; per run the
        # quotas that count its pods (only runs that have any)
        self.quotas: Sequence[GpuQuota] = ()
        self.quota_left: list[int] = []
        self.quota_foreign: list[int] = []
        self.quotas_of: dict[str, tuple[int, ...]] = {}
        #: run -> (the quota that refused its minimum, the GPUs that quota had left)
        self.quota_refused: dict[str, tuple[int, int]] = {}
        #: run -> the quota that stopped its growth
        self.quota_limited: dict[str, int] = {}
        self._refusals: dict[tuple[int, int, int, int], Grant] = {}
        classes_of = {r.key: cap.eligible(r.placement) for r in runs}
        for classes in classes_of.values():
            for cid in classes:
                cap.demand[cid] += 1
        order_of = {cid: (cap.demand[cid], cid) for cid in range(len(cap.demand))}
        sorted_classes: dict[tuple[int, ...], list[int]] = {}
        for key, classes in classes_of.items():
            # runs share few distinct class lists: sort each distinct list once
            t = tuple(classes)
            got = sorted_classes.get(t)
            if got is None:
                got = sorted_classes[t] = sorted(classes, key=order_of.__getitem__)
            classes_of[key] = got
        #: per run: the node classes it may use, least contended first
        self.classes_of = classes_of

    def set_quotas(
        self,
        quotas: Sequence[GpuQuota],
        in_ns: Mapping[str, list[int]],
        foreign: list[int],
        runs: Sequence[RunRequest],
    ) -> None:
        if not quotas:
            return
        self.quotas = quotas
        self.quota_foreign = foreign
        self.quota_left = [q.hard - used for q, used in zip(quotas, foreign, strict=True)]
        covering: dict[tuple[str, str | None], tuple[int, ...]] = {}
        for r in runs:
            ids = in_ns.get(r.namespace)
            if not ids:
                continue
            k = (r.namespace, r.priority_class)
            got = covering.get(k)
            if got is None:
                got = covering[k] = tuple(i for i in ids if quotas[i].covers(r.priority_class))
            if got:
                self.quotas_of[r.key] = got

    def share(self, namespace: str) -> float:
        """The namespace's GPUs granted so far per unit of its weight."""
        gpus = self.ns_gpus.get(namespace, 0)
        return gpus / self.weights[namespace] if namespace in self.weights else gpus

    def _charge(self, run: RunRequest, workers: int) -> None:
        gpus = workers * run.gpus_per_worker
        ns_gpus, ns = self.ns_gpus, run.namespace
        ns_gpus[ns] = ns_gpus.get(ns, 0) + gpus
        if self.quotas_of:
            for qi in self.quotas_of.get(run.key, ()):
                self.quota_left[qi] -= gpus

    def _quota_room(self, run: RunRequest) -> tuple[int, int] | None:
        """(workers the run's quotas still allow, the quota allowing fewest); None: no quota."""
        ids = self.quotas_of.get(run.key)
        if not ids:
            return None
        left = self.quota_left
        qi = ids[0] if len(ids) == 1 else min(ids, key=left.__getitem__)
        gpus = run.gpus_per_worker
        return (left[qi] // gpus if gpus else run.cap), qi

    def admit_in_fair_order(self, order: Sequence[RunRequest]) -> None:
        """`admit` each run of `order` (priority, admitted first, FIFO), each priority's waiting
        runs interleaved by namespace: next comes the namespace furthest below its weighted
        share of the GPUs granted so far, FIFO within it (ties: the older run). Admitted runs
        keep their place: fairness orders the queue, it does not preempt."""
        admit, share = self.admit, self.share
        i, end = 0, len(order)
        while i < end:
            head = order[i]
            if head.previous >= head.min:
                admit(head)
                i += 1
                continue
            j = i + 1
            while j < end and order[j].priority == head.priority:
                j += 1  # the rest of this priority: all waiting (admitted ones sort first)
            queues: dict[str, deque[RunRequest]] = {}
            for r in order[i:j]:
                queues.setdefault(r.namespace, deque()).append(r)
            if len(queues) == 1:
                for r in order[i:j]:
                    admit(r)
                i = j
                continue
            i = j
            heap = [(share(ns), q[0].created, q[0].key, ns) for ns, q in queues.items()]
            heapq.heapify(heap)
            while heap:
                ns = heap[0][3]
                queue = queues[ns]
                admit(queue.popleft())
                if queue:
                    nxt = queue[0]
                    heapq.heapreplace(heap, (share(ns), nxt.created, nxt.key, ns))
                else:
                    heapq.heappop(heap)

    def admit(self, run: RunRequest) -> None:
        """Grant the run its minimum if it fits its quotas and the nodes, all at once."""
        if self.quotas_of:
            room = self._quota_room(run)
            if room is not None and room[0] < run.min:
                self.quota_refused[run.key] = (room[1], self.quota_left[room[1]])
                return
        if self.place_gang(run, run.min):
            self.granted[run.key] = run.min
            self._charge(run, run.min)

    def place(self, run: RunRequest, count: int) -> int:
        """Place up to `count` more workers of `run`; returns how many fit."""
        classes = self.classes_of[run.key]
        per = self.placements.setdefault(run.key, {})
        take, gpus = self.cap.take, run.gpus_per_worker  # the hot loop of a decision
        done = 0
        while done < count:
            got = take(classes, gpus)
            if got is None:
                break
            per[got[1]] = per.get(got[1], 0) + 1
            done += 1
        return done

    def place_gang(self, run: RunRequest, count: int) -> bool:
        """Place `count` workers of `run` all at once, or none."""
        classes = self.classes_of[run.key]
        taken: list[tuple[int, str]] = []
        for _ in range(count):
            got = self.cap.take(classes, run.gpus_per_worker)
            if got is None:
                for cid, node in reversed(taken):
                    self.cap.give_back(cid, node, run.gpus_per_worker)
                return False
            taken.append(got)
        per = self.placements.setdefault(run.key, {})
        for _, node in taken:
            per[node] = per.get(node, 0) + 1
        return True

    def keep_in_cooldown(self, level: Sequence[RunRequest], now: float, cooldown: float) -> None:
        """Runs whose count changed less than `cooldown` ago keep it (hysteresis). A
        `lastScaleTime` in the future is not a recent change: status is writable by the run's
        own launcher token, and a forged future time must not pin surplus workers forever."""
        for run in level:
            since = None if run.last_scale is None else now - run.last_scale
            keep = min(run.previous, run.cap) - self.granted[run.key]
            if since is not None and 0 <= since < cooldown and keep > 0:
                room = self._quota_room(run) if self.quotas_of else None
                if room is not None and room[0] < keep:
                    keep = room[0]
                    self.quota_limited[run.key] = room[1]
                got = self.place(run, keep)
                self.granted[run.key] += got
                self._charge(run, got)

    def _grow_one(self, run: RunRequest) -> bool:
        """One more worker for `run`, if its quotas and the nodes have room."""
        ids = self.quotas_of.get(run.key) if self.quotas_of else None
        if ids:
            gpus = run.gpus_per_worker
            for qi in ids:
                if self.quota_left[qi] < gpus:
                    self.quota_limited[run.key] = qi
                    return False
        if self.place(run, 1) == 0:
            return False
        self.granted[run.key] += 1
        if ids:
            self._charge(run, 1)
        else:  # inline: once per surplus worker
            ns_gpus, ns = self.ns_gpus, run.namespace
            ns_gpus[ns] = ns_gpus.get(ns, 0) + run.gpus_per_worker
        return True

    def grow_fairly(self, level: Sequence[RunRequest]) -> None:
        """Two-level water-filling: the next worker goes to the namespace of this level with the
        fewest GPUs per unit of weight, and within it to the run with fewest workers."""
        granted, grow = self.granted, self._grow_one
        heaps: dict[str, list[tuple[int, int]]] = {}
        for i, r in enumerate(level):
            if granted[r.key] < r.cap:
                heaps.setdefault(r.namespace, []).append((granted[r.key], i))
        pop, replace = heapq.heappop, heapq.heapreplace
        if len(heaps) == 1:  # one namespace: water-filling by run only
            heap = next(iter(heaps.values()))
            heapq.heapify(heap)
            while heap:
                count, i = heap[0]
                run = level[i]
                if grow(run) and count + 1 < run.cap:
                    replace(heap, (count + 1, i))
                else:
                    pop(heap)
            return
        for heap in heaps.values():
            heapq.heapify(heap)
        share = self.share
        outer = [(share(ns), ns) for ns in heaps]
        heapq.heapify(outer)
        while outer:
            ns = outer[0][1]
            heap = heaps[ns]
            count, i = heap[0]
            run = level[i]
            if grow(run) and count + 1 < run.cap:
                replace(heap, (count + 1, i))
            else:
                pop(heap)
            if heap:
                replace(outer, (share(ns), ns))
            else:
                pop(outer)

    def quota_note(self, qi: int) -> str:
        """What the Admitted message of a run that its namespace's quota keeps from growing
        adds: the quota and its limit (not its use, which moves with every other run of the
        namespace: each move would rewrite the status of every run the quota holds back)."""
        q = self.quotas[qi]
        return f"; ResourceQuota {q.namespace}/{q.name} caps {q.resource} at {q.hard}"

    def refusal(self, run: RunRequest) -> Grant:
        """Why a run got no workers, as its status shows it."""
        need = run.min * run.gpus_per_worker
        if not self.cap.could_ever_fit(self.classes_of[run.key], run.gpus_per_worker, run.min):
            return Grant(
                0,
                REASON_UNSCHEDULABLE,
                f"no schedulable nodes can ever hold {run.min} workers of "
                f"{run.gpus_per_worker} GPUs matching the run's nodeSelector/tolerations/affinity",
            )
        refused = self.quota_refused.get(run.key)
        if refused is not None:
            return self._quota_refusal(run, *refused)
        if run.previous >= run.min or run.preempted:
            return Grant(
                0,
                REASON_PREEMPTED,
                f"preempted: runs of priority above {run.priority} need the GPUs of this run's "
                f"minimum ({need} GPUs); it waits to be re-admitted",
            )
        return Grant(
            0, REASON_QUEUED, f"waiting for {need} free GPUs for the minimum of {run.min} workers"
        )

    def _quota_refusal(self, run: RunRequest, qi: int, left: int) -> Grant:
        # the runs a quota refuses are often most of a namespace's queue, with few distinct
        # messages: each is made once
        key = (qi, left, run.min, run.gpus_per_worker)
        got = self._refusals.get(key)
        if got is None:
            got = self._refusals[key] = self._make_quota_refusal(run, qi, left)
        return got

    def _make_quota_refusal(self, run: RunRequest, qi: int, left: int) -> Grant:
        q = self.quotas[qi]
        other = self.quota_foreign[qi]
        ahead = q.hard - other - left  # the minimums of the namespace's runs placed before it
        need = run.min * run.gpus_per_worker
        workers = f"{run.min} worker{'s' if run.min != 1 else ''}"
        return Grant(
            0,
            REASON_QUOTA_EXCEEDED,
            f"ResourceQuota {q.namespace}/{q.name} allows {q.resource}: {q.hard}; "
            f"{ahead + other} used ({ahead} by the minimums of runs admitted ahead of this one, "
            f"{other} by other pods), the minimum of {workers} needs {need}: it waits "
            f"until runs of {q.namespace} free that much (they finish, are suspended or "
            "deleted); or lower spec.workers.min, or ask a cluster admin to raise the quota",
        )
