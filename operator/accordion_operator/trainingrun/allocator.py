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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
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

    ``buckets[c][f]`` holds the nodes of class ``c`` with exactly ``f`` free GPUs, and bit ``f`` of
    ``nonempty[c]`` says whether that bucket holds any: a best-fit placement is a few integer
    operations per class, it scans neither nodes nor buckets.
    """

    def __init__(self, nodes: Sequence[Node], foreign_use: Mapping[str, int]) -> None:
        self.class_of: dict[tuple[object, ...], int] = {}
        self.class_shape: list[tuple[Mapping[str, str], tuple[Taint, ...]]] = []
        self.buckets: list[list[list[str]]] = []
        self.total: list[list[int]] = []  # allocatable histogram per class (for "never fits")
        self.used: dict[str, int] = {}
        self.free: dict[str, int] = {}
        self.initial_free: dict[str, int] = {}
        #: free GPUs on all schedulable nodes together
        self.free_gpus = 0
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
            self.free_gpus += free
            self.buckets[cid][free].append(node.name)
            self.total[cid][node.gpus] += 1
        for buckets in self.buckets:
            for bucket in buckets:
                bucket.reverse()  # pop() takes the lowest name first: deterministic, readable
        self.nonempty = [
            sum(1 << free for free, bucket in enumerate(buckets) if bucket)
            for buckets in self.buckets
        ]
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
        nonempty = self.nonempty
        best, best_free = -1, 0
        for cid in classes:
            fits = nonempty[cid] >> gpus  # bit i: some node has gpus + i free
            if fits:
                free = gpus + (fits & -fits).bit_length() - 1  # the lowest such bucket
                # classes come in (demand, id) order: among equal fits the first one wins,
                # and nothing later can beat an exact fit
                if best < 0 or free < best_free:
                    best, best_free = cid, free
                    if free == gpus:
                        break
        if best < 0:
            return None
        buckets = self.buckets[best]
        source = buckets[best_free]
        node = source.pop()
        left = best_free - gpus
        buckets[left].append(node)
        bits = nonempty[best] | 1 << left
        if not source:
            bits &= ~(1 << best_free)
        nonempty[best] = bits
        self.free[node] = left
        self.free_gpus -= gpus
        return best, node

    def give_back(self, cid: int, node: str, gpus: int) -> None:
        free = self.free[node]
        buckets = self.buckets[cid]
        bucket = buckets[free]
        if bucket and bucket[-1] == node:  # the usual case: undone in reverse order
            bucket.pop()
        else:
            bucket.remove(node)
        buckets[free + gpus].append(node)
        bits = self.nonempty[cid] | 1 << (free + gpus)
        if not bucket:
            bits &= ~(1 << free)
        self.nonempty[cid] = bits
        self.free[node] = free + gpus
        self.free_gpus += gpus


class _Group:
    """The node classes that the runs of one placement may use, least contended first, and
    what the decision learnt about their room."""

    __slots__ = ("classes", "ever", "too_many")

    def __init__(self, classes: list[int]) -> None:
        self.classes = classes
        #: GPUs per worker -> the fewest workers known not to fit. The room for workers of g
        #: GPUs (the sum of free // g over the classes' nodes) only shrinks during a decision (a
        #: gang that does not fit is given back exactly, bucket order included), so no gang at
        #: least that big can fit later: most of a busy cluster's queue is refused by this
        #: look-up instead of being placed and given back worker by worker.
        self.too_many: dict[int, int] = {}
        #: (GPUs per worker, workers) -> `_Capacity.could_ever_fit`, for the refusals
        self.ever: dict[tuple[int, int], bool] = {}


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
    quota_order, in_ns = _index_quotas(quotas)
    foreign, quota_foreign = _fixed_load(pods, runs, quota_order, in_ns)
    plan = _Planner(_Capacity(nodes, foreign), runs, weights or {})
    plan.set_quotas(quota_order, in_ns, quota_foreign, runs)
    order = _visit_order(runs)
    _admit_minimums(plan, runs, order)
    _grow_surplus(plan, order, now, cooldown)
    cap = plan.cap
    node_used = {n: cap.used[n] + cap.initial_free[n] - cap.free[n] for n in cap.used}
    return Allocation(
        grants=_grants(plan, runs),
        node_used=node_used,
        placements=plan.placements,
        namespace_gpus=dict(plan.ns_gpus),
    )


def _index_quotas(quotas: Sequence[GpuQuota]) -> tuple[list[GpuQuota], dict[str, list[int]]]:
    """The order quotas are numbered in, and which of them each namespace has."""
    # a fixed order, whatever order the cache lists them in: the refusal that names the
    # tightest quota must not flip between equal ones from one decision to the next
    quota_order = sorted(quotas, key=lambda q: (q.namespace, q.name, q.hard))
    in_ns: dict[str, list[int]] = {}
    for qi, q in enumerate(quota_order):
        in_ns.setdefault(q.namespace, []).append(qi)
    return quota_order, in_ns


def _fixed_load(
    pods: Iterable[PodUse],
    runs: Sequence[RunRequest],
    quota_order: Sequence[GpuQuota],
    in_ns: Mapping[str, list[int]],
) -> tuple[dict[str, int], list[int]]:
    """Which GPUs the plan cannot move: those held per node and charged per quota by other pods."""
    owners: set[tuple[str, str]] | None = None  # made when the first pod of a run shows up
    foreign: dict[str, int] = {}
    quota_foreign = [0] * len(quota_order)
    for pod in pods:
        if pod.gpus <= 0:
            continue
        # Accordion's own workers are re-planned from scratch; everything else is fixed load,
        # a pod that only carries a run's labels included.
        if pod.run is not None:
            if owners is None:
                owners = {(r.key, r.uid) for r in runs}
            if (pod.run, pod.owner) in owners:
                continue
        if pod.node:
            foreign[pod.node] = foreign.get(pod.node, 0) + pod.gpus
        for qi in in_ns.get(pod.namespace, ()):
            if quota_order[qi].covers(pod.priority_class):
                quota_foreign[qi] += pod.gpus
    return foreign, quota_foreign


def _visit_order(runs: Sequence[RunRequest]) -> list[RunRequest]:
    """The order runs are visited in: priority (high first), admitted before waiting, FIFO."""
    # by (-priority, waiting, created, key), in stable passes over keys made in C (a key tuple
    # made by a lambda per run took 40% longer)
    by_age = sorted(runs, key=attrgetter("created", "key"))
    order = [r for r in by_age if r.previous >= r.min] + [r for r in by_age if r.previous < r.min]
    order.sort(key=attrgetter("priority"), reverse=True)
    return order


def _admit_minimums(
    plan: _Planner, runs: Sequence[RunRequest], order: Sequence[RunRequest]
) -> None:
    """Which runs get their gang minimum (rule 1), those no present run may preempt first."""
    protected = _protected(runs)
    admit, rest = plan.admit, list[RunRequest]()
    for run in order:
        if run.key in protected:
            admit(run)
        else:
            rest.append(run)
    plan.admit_in_fair_order(rest)


def _grow_surplus(plan: _Planner, order: Sequence[RunRequest], now: float, cooldown: float) -> None:
    """How many workers above its minimum each admitted run gets (rules 2-4)."""
    # per surplus level, highest first: a level's cooldown-frozen counts come before its fair
    # growth, so hysteresis is honoured ahead of fairness but never ahead of a higher level
    levels: dict[int, list[RunRequest]] = {}
    granted = plan.granted
    for run in order:
        if run.key in granted:
            level = levels.get(run.surplus_level)
            if level is None:
                levels[run.surplus_level] = [run]
            else:
                level.append(run)
    for priority in sorted(levels, reverse=True):
        plan.keep_in_cooldown(levels[priority], now, cooldown)
        plan.grow_fairly(levels[priority])


def _grants(plan: _Planner, runs: Sequence[RunRequest]) -> dict[str, Grant]:
    """What each run's status says of the plan: its workers, or why it got none."""
    grants: dict[str, Grant] = {}
    granted, limited = plan.granted, plan.quota_limited
    # Grants say the same for many runs: each distinct one is made once (a frozen Grant and
    # its message per run cost more than a look-up).
    made: dict[tuple[int, int, int, int], Grant] = {}
    for run in runs:
        key = run.key
        n = granted.get(key, 0)
        if n:  # inline: the common case, 10,000 times a decision
            requested = run.cap
            qi = limited.get(key, -1) if limited and n < requested else -1
            shape = (n, requested, run.gpus_per_worker, qi)
            grant = made.get(shape)
            if grant is None:
                note = plan.quota_note(qi) if qi >= 0 else ""
                grant = made[shape] = _admitted(n, requested, run.gpus_per_worker, note)
            grants[key] = grant
        else:
            grants[key] = plan.refusal(run)
    return grants


def _protected(runs: Sequence[RunRequest]) -> set[str]:
    """Admitted runs that no present run may preempt: none of higher priority in their own
    namespace (other than `never` classes) and none of higher priority whose class may preempt
    other namespaces. O(runs); with one priority level, every admitted run."""
    floor = float("-inf")
    top_cluster, top_ns = floor, dict[str, float]()
    for r in runs:
        if r.preempts != "never":
            if r.priority > top_ns.get(r.namespace, floor):
                top_ns[r.namespace] = r.priority
            if r.preempts == "cluster" and r.priority > top_cluster:
                top_cluster = r.priority
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
        #: refusals made so far, by what their message says (`refusal`)
        self._refusals: dict[tuple[str, int, int], Grant] = {}
        self._quota_refusals: dict[tuple[int, int, int, int], Grant] = {}
        # Runs share few distinct placements: the classes each admits are found and sorted
        # once per placement, not per run (equal placements are often distinct objects, one
        # per run, and not cheap to compare: one look-up per run).
        group_of_placement: dict[Placement, _Group] = {}
        #: per run: the node classes it may use, least contended first, and their room
        self.group_of: dict[str, _Group] = {}
        for r in runs:
            group = group_of_placement.get(r.placement)
            if group is None:
                group = group_of_placement[r.placement] = _Group(list(cap.eligible(r.placement)))
            self.group_of[r.key] = group
        for group, count in Counter(self.group_of.values()).items():
            for cid in group.classes:
                cap.demand[cid] += count
        order_of = {cid: (cap.demand[cid], cid) for cid in range(len(cap.demand))}
        for group in group_of_placement.values():
            group.classes.sort(key=order_of.__getitem__)

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
        admit = self.admit
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
            segment, i = order[i:j], j
            if self.nothing_fits(segment):
                self.refuse(segment)
                continue
            # per namespace its waiting runs, oldest first
            queues: dict[str, list[RunRequest]] = {}
            for r in segment:
                queue = queues.get(r.namespace)
                if queue is None:
                    queues[r.namespace] = [r]
                else:
                    queue.append(r)
            if len(queues) == 1:
                for r in segment:
                    admit(r)
                continue
            self._admit_interleaved(queues)

    def _admit_interleaved(self, queues: dict[str, list[RunRequest]]) -> None:
        """Which namespace's waiting run is tried next: the one furthest below its share."""
        admit, share = self.admit, self.share
        for queue in queues.values():
            queue.reverse()  # the next one last: pop() is cheap
        heap = [(share(ns), q[-1].created, q[-1].key, ns) for ns, q in queues.items()]
        heapq.heapify(heap)
        full = False  # the cluster was full and some waiting run needs no GPUs
        needs: dict[str, list[tuple[tuple[int, ...], int]] | None] = {}
        while heap:
            level, _, _, ns = heap[0]
            queue = queues[ns]
            run = queue.pop()
            if admit(run):
                level = share(ns)  # a refusal leaves the namespace's share as it was
                if not full and not self.cap.free_gpus:
                    rest = [r for q in queues.values() for r in q]
                    if self.nothing_fits(rest):
                        self.refuse(rest)
                        return
                    full = True
            elif queue and run.key in self.quota_refused:
                if ns not in needs:
                    needs[ns] = self.quota_needs(queue)
                if self.quotas_refuse(needs[ns]):
                    # the namespace's quotas refuse the rest of its queue, whenever its
                    # turn comes: their left GPUs only change when a run of it is admitted
                    for r in queue:
                        admit(r)
                    queue.clear()
            if queue:
                nxt = queue[-1]
                heapq.heapreplace(heap, (level, nxt.created, nxt.key, ns))
            else:
                heapq.heappop(heap)

    def nothing_fits(self, runs: Sequence[RunRequest], *, growing: bool = False) -> bool:
        """Whether no node has a free GPU while each of `runs` needs some for its minimum (for
        one more worker when `growing`). Then none of them can be placed, in whatever order,
        and refusing them changes no share and no quota: the fair order, which only matters
        through what is granted, can be skipped (in a busy cluster, most of the queue)."""
        if self.cap.free_gpus:
            return False
        if growing:
            return all(r.gpus_per_worker > 0 for r in runs)
        return all(r.gpus_per_worker > 0 and r.min > 0 for r in runs)

    def refuse(self, runs: Sequence[RunRequest]) -> None:
        """Refuse `runs`, which `nothing_fits`: only what their quotas say is recorded (the
        quota that refuses a run and the GPUs it has left make its message)."""
        quotas_of, admit = self.quotas_of, self.admit
        for r in runs:
            if r.key in quotas_of:
                admit(r)  # refused, by its quota or by the nodes

    def quota_needs(self, queue: Sequence[RunRequest]) -> list[tuple[tuple[int, ...], int]] | None:
        """Per set of quotas that count the runs of `queue` (one namespace's), the fewest GPUs
        a minimum of theirs needs; None when some run is under no quota or needs no GPUs."""
        needs: dict[tuple[int, ...], int] = {}
        for r in queue:
            ids = self.quotas_of.get(r.key)
            if not ids or not r.gpus_per_worker:
                return None
            need = r.min * r.gpus_per_worker
            if need < needs.get(ids, need + 1):
                needs[ids] = need
        return list(needs.items())

    def quotas_refuse(self, needs: list[tuple[tuple[int, ...], int]] | None) -> bool:
        """Whether the quotas refuse each of the minimums summed up by `quota_needs` (`admit`
        refuses a run when its tightest quota has fewer GPUs left than its minimum needs)."""
        left = self.quota_left
        return needs is not None and all(min(left[qi] for qi in ids) < need for ids, need in needs)

    def admit(self, run: RunRequest) -> bool:
        """Grant the run its minimum if it fits its quotas and the nodes, all at once (the
        workers placed one by one, and given back if the last ones do not fit). Once per run:
        the refusals return early."""
        key, count, gpus = run.key, run.min, run.gpus_per_worker
        ids = self.quotas_of.get(key) if self.quotas_of else None
        if ids:  # `_quota_room`, inline
            left = self.quota_left
            qi = ids[0] if len(ids) == 1 else min(ids, key=left.__getitem__)
            if (left[qi] // gpus if gpus else run.cap) < count:
                self.quota_refused[key] = (qi, left[qi])
                return False
        group = self.group_of[key]
        if count >= group.too_many.get(gpus, count + 1):
            return False
        classes, take = group.classes, self.cap.take
        taken: list[tuple[int, str]] = []
        for _ in range(count):
            got = take(classes, gpus)
            if got is None:
                group.too_many[gpus] = len(taken) + 1
                for cid, node in reversed(taken):
                    self.cap.give_back(cid, node, gpus)
                return False
            taken.append(got)
        per = self.placements.setdefault(key, {})
        for _, node in taken:
            per[node] = per.get(node, 0) + 1
        self.granted[key] = count
        ns_gpus, ns = self.ns_gpus, run.namespace
        ns_gpus[ns] = ns_gpus.get(ns, 0) + count * gpus
        if ids:
            for qi in ids:
                self.quota_left[qi] -= count * gpus
        return True

    def place(self, run: RunRequest, count: int) -> int:
        """Place up to `count` more workers of `run`; returns how many fit."""
        group = self.group_of[run.key]
        per = self.placements.setdefault(run.key, {})
        gpus = run.gpus_per_worker
        if group.too_many.get(gpus) == 1:
            return 0  # no room left for one: the usual answer once the surplus is shared out
        classes, take = group.classes, self.cap.take  # the hot loop of a decision
        done = 0
        while done < count:
            got = take(classes, gpus)
            if got is None:
                group.too_many[gpus] = 1
                break
            per[got[1]] = per.get(got[1], 0) + 1
            done += 1
        return done

    def keep_in_cooldown(self, level: Sequence[RunRequest], now: float, cooldown: float) -> None:
        """Runs whose count changed less than `cooldown` ago keep it (hysteresis). A
        `lastScaleTime` in the future is not a recent change: status is writable by the run's
        own launcher token, and a forged future time must not pin surplus workers forever."""
        for run in level:
            if run.last_scale is None or not 0 <= now - run.last_scale < cooldown:
                continue
            keep = min(run.previous, run.cap) - self.granted[run.key]
            if keep > 0:
                room = self._quota_room(run) if self.quotas_of else None
                if room is not None and room[0] < keep:
                    keep = room[0]
                    self.quota_limited[run.key] = room[1]
                if run.gpus_per_worker and not self.cap.free_gpus:
                    continue  # no free GPU: nothing to place (the run holds its minimum already)
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
        if self.nothing_fits(level, growing=True):
            for r in level:  # one attempt each (it fails): a quota short of it says so
                if granted[r.key] < r.cap:
                    grow(r)
            return
        heaps: dict[str, list[tuple[int, int]]] = {}
        for i, r in enumerate(level):
            count = granted[r.key]
            if count < r.cap:
                heap = heaps.get(r.namespace)
                if heap is None:
                    heaps[r.namespace] = [(count, i)]
                else:
                    heap.append((count, i))
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
        """Why a run got no workers, as its status shows it. Most of a busy cluster's queue is
        refused for few distinct reasons and numbers: each Grant is made once and shared."""
        group, gpus = self.group_of[run.key], run.gpus_per_worker
        fits = group.ever.get((gpus, run.min))
        if fits is None:
            fits = group.ever[gpus, run.min] = self.cap.could_ever_fit(group.classes, gpus, run.min)
        if not fits:
            key = (REASON_UNSCHEDULABLE, run.min, gpus)
        else:
            refused = self.quota_refused.get(run.key)
            if refused is not None:
                qi, left = refused
                quota_key = (qi, left, run.min, gpus)
                got = self._quota_refusals.get(quota_key)
                if got is None:
                    got = self._quota_refusals[quota_key] = self._quota_refusal(run, qi, left)
                return got
            if run.previous >= run.min or run.preempted:
                key = (REASON_PREEMPTED, run.priority, run.min * gpus)
            else:
                key = (REASON_QUEUED, run.min, run.min * gpus)
        got = self._refusals.get(key)
        if got is None:
            got = self._refusals[key] = _refusal(*key)
        return got

    def _quota_refusal(self, run: RunRequest, qi: int, left: int) -> Grant:
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


def _refusal(reason: str, a: int, b: int) -> Grant:
    """A refusal that is not the quota's, from `_Planner.refusal`'s key: (Unschedulable,
    min, GPUs per worker), (Preempted, priority, GPUs of the minimum) or (Queued, min, GPUs of
    the minimum)."""
    if reason == REASON_UNSCHEDULABLE:
        return Grant(
            0,
            REASON_UNSCHEDULABLE,
            f"no schedulable nodes can ever hold {a} workers of "
            f"{b} GPUs matching the run's nodeSelector/tolerations/affinity",
        )
    if reason == REASON_PREEMPTED:
        return Grant(
            0,
            REASON_PREEMPTED,
            f"preempted: runs of priority above {a} need the GPUs of this run's "
            f"minimum ({b} GPUs); it waits to be re-admitted",
        )
    return Grant(0, REASON_QUEUED, f"waiting for {b} free GPUs for the minimum of {a} workers")


def _admitted(workers: int, requested: int, gpus: int, note: str) -> Grant:
    return Grant(
        workers,
        REASON_GANG_ADMITTED,
        f"granted {workers} of {requested} requested workers ({workers * gpus} GPUs){note}",
    )
