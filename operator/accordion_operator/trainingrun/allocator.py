"""The elastic GPU allocator: pure policy, no I/O, no clock (``now`` is an argument).

Given the nodes, every pod's GPU use and the runs that want GPUs, decide how many workers each run
gets. The plan is a simulated placement (best fit, node by node), so a plan never needs more GPUs
on a node than the node has; which real node a worker lands on is still the kube-scheduler's call.

Rules, in the order they are applied:

1. *Gang minimum, priority first.* Runs are visited by priority (high first); within a priority
   the runs already admitted come first (so a newcomer never evicts an equal), then FIFO by
   creation time. A run is admitted only if all its ``min`` workers fit. A later, smaller run of
   the same priority may still be admitted when an earlier one does not fit (best-effort FIFO:
   a big run does not block the queue behind it).
2. *Elastic surplus last.* Workers above ``min`` are planned only after every admitted run's
   minimum, so the surplus of lower-priority runs is what a higher-priority minimum takes first.
   A lower-priority run loses its minimum (is preempted whole) only when the higher-priority
   minimums do not fit otherwise - the last resort - and its grant says so.
   *Who may preempt whom* (``RunRequest.preempts``, from the run's PriorityClass): an admitted
   run keeps its minimum ahead of every higher priority unless some run that may preempt it is
   present: one of its own namespace (class default), or of any namespace whose class says
   ``cluster``; a ``never`` class preempts nobody. Such protected runs are placed first.
3. *Fair growth.* Within a priority, free GPUs are shared by water-filling: the run with the fewest
   workers gets the next one, up to its requested count (``spec.workers.replicas`` or ``max``).
   Surplus levels count a priority above 0 only for classes that may preempt other namespaces:
   otherwise a team's own high class would grow its runs first by taking other teams' surplus.
4. *Hysteresis.* A run whose count changed less than ``cooldown`` seconds ago keeps its previous
   count (as far as GPUs allow after all minimums) instead of being trimmed for fairness, so runs
   do not oscillate when others come and go. Growth is never delayed.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from accordion_operator.api.trainingrun import (
    REASON_GANG_ADMITTED,
    REASON_PREEMPTED,
    REASON_QUEUED,
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
    """A bound, non-terminal pod that requests GPUs; ``run`` is its run's key if Accordion's,
    ``owner`` the uid of its controller (a pod counts as a run's worker only if both match)."""

    node: str
    gpus: int
    run: str | None = None
    owner: str = ""


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

    @property
    def surplus_level(self) -> int:
        """The priority its surplus competes at (module docstring, 3.)."""
        return self.priority if self.preempts == "cluster" else min(self.priority, 0)

    @property
    def cap(self) -> int:
        return max(self.min, min(self.requested, self.max))


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
) -> Allocation:
    """Target worker count per run (see the module docstring for the rules)."""
    owners = {(r.key, r.uid) for r in runs}
    foreign: dict[str, int] = {}
    for pod in pods:
        # Accordion's own workers are re-planned from scratch; everything else is fixed load,
        # a pod that only carries a run's labels included.
        if pod.gpus > 0 and (pod.run is None or (pod.run, pod.owner) not in owners):
            foreign[pod.node] = foreign.get(pod.node, 0) + pod.gpus
    plan = _Planner(_Capacity(nodes, foreign), runs)
    order = sorted(runs, key=lambda r: (-r.priority, r.previous < r.min, r.created, r.key))
    # 1. gang minimums: first those no present run may preempt, then highest priority first
    protected = _protected(runs)
    for run in [r for r in order if r.key in protected] + [
        r for r in order if r.key not in protected
    ]:
        if plan.place_gang(run, run.min):
            plan.granted[run.key] = run.min
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
    for run in runs:
        n = plan.granted.get(run.key, 0)
        if n:  # inline: the common case, 10,000 times a decision
            gpus = n * run.gpus_per_worker
            msg = f"granted {n} of {run.cap} requested workers ({gpus} GPUs)"
            grants[run.key] = Grant(n, REASON_GANG_ADMITTED, msg)
        else:
            grants[run.key] = plan.refusal(run)
    return Allocation(grants=grants, node_used=node_used, placements=plan.placements)


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
    """One decision's working state: the capacity left, and the workers granted and placed."""

    def __init__(self, cap: _Capacity, runs: Sequence[RunRequest]) -> None:
        self.cap = cap
        self.granted: dict[str, int] = {}
        self.placements: dict[str, dict[str, int]] = {}
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
                self.granted[run.key] += self.place(run, keep)

    def grow_fairly(self, level: Sequence[RunRequest]) -> None:
        """Water-filling: one worker at a time to the run of this level that has fewest."""
        granted, place = self.granted, self.place
        heap = [(granted[r.key], i) for i, r in enumerate(level) if granted[r.key] < r.cap]
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            count, i = pop(heap)
            run = level[i]
            if place(run, 1) == 0:
                continue  # nothing more fits this run's nodes; others may still grow
            granted[run.key] = count + 1
            if count + 1 < run.cap:
                push(heap, (count + 1, i))

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
