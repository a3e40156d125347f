"""The allocator's shortcuts change no decision: `decide_allocation` against itself without them.

The reference is the same planner made straightforward again: best fit by scanning every
bucket of every class (no free-GPU bit masks, no early exit), no memo of the gangs that did not
fit, no skipping of the fair order when the cluster is full or a namespace's quotas refuse the
rest of its queue. Every output must be equal: grants (reasons and messages included), planned
node use, placements and GPUs per namespace.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from accordion_operator.api.trainingrun import (
    REASON_GANG_ADMITTED,
    REASON_QUEUED,
    REASON_QUOTA_EXCEEDED,
)
from accordion_operator.trainingrun import allocator
from accordion_operator.trainingrun.allocator import (
    Allocation,
    GpuQuota,
    Node,
    Placement,
    PodUse,
    RunRequest,
    Taint,
    Toleration,
    decide_allocation,
)


def _scan_take(self: Any, classes: list[int], gpus: int) -> tuple[int, str] | None:
    """Best fit the long way: the lowest non-empty bucket of each class, the least
    (free GPUs, demand, class) of all."""
    best: tuple[int, int, int] | None = None
    for cid in classes:
        for free in range(gpus, len(self.buckets[cid])):
            if self.buckets[cid][free]:
                cand = (free, self.demand[cid], cid)
                if best is None or cand < best:
                    best = cand
                break
    if best is None:
        return None
    free, _, cid = best
    node: str = self.buckets[cid][free].pop()
    self.buckets[cid][free - gpus].append(node)
    self.free[node] = free - gpus
    self.free_gpus -= gpus
    return cid, node


def _scan_give_back(self: Any, cid: int, node: str, gpus: int) -> None:
    free = self.free[node]
    self.buckets[cid][free].remove(node)
    self.buckets[cid][free + gpus].append(node)
    self.free[node] = free + gpus
    self.free_gpus += gpus


class _Forgetful(dict[int, int]):
    """A memo that remembers nothing: every gang is placed (and given back) for real."""

    def __setitem__(self, key: int, value: int) -> None:
        pass


def _forgetful_group(self: Any, classes: list[int]) -> None:
    self.classes = classes
    self.too_many = _Forgetful()
    self.ever = {}


@contextmanager
def straightforward() -> Iterator[None]:
    with (
        mock.patch.object(allocator._Capacity, "take", _scan_take),
        mock.patch.object(allocator._Capacity, "give_back", _scan_give_back),
        mock.patch.object(allocator._Group, "__init__", _forgetful_group),
        mock.patch.object(allocator._Planner, "nothing_fits", return_value=False),
        mock.patch.object(allocator._Planner, "quotas_refuse", return_value=False),
    ):
        yield


def decision(a: Allocation) -> tuple[Any, ...]:
    grants = [(k, g.workers, g.reason, g.message) for k, g in a.grants.items()]
    return grants, a.node_used, a.placements, a.namespace_gpus


NAMESPACES = ("a", "b", "c")
CLASSES = (None, "low", "high")
TAINT = Taint("nvidia.com/gpu", "present")
PLACEMENTS = (
    Placement(),
    Placement(tolerations=(Toleration("nvidia.com/gpu", "Exists"),)),
    Placement(node_selector=(("gpu", "a"),), tolerations=(Toleration(None, "Exists"),)),
)


@st.composite
def busy_world(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Few nodes of two kinds and more runs than they hold (so the cluster fills and the
    queue is long), of several namespaces, priorities, preemption scopes and classes; workers
    of 0-4 GPUs, minimums of 0-3, previous grants, cooldowns (one in the future), preempted
    runs; pods of the runs, strays and unbound ones; unscoped and scoped quotas; weights."""
    nodes = [
        Node(
            f"n{i}",
            draw(st.sampled_from([0, 1, 2, 4, 8])),
            {"gpu": draw(st.sampled_from("ab"))},
            draw(st.sampled_from([(), (TAINT,)])),
            unschedulable=draw(st.booleans()) and draw(st.booleans()),
        )
        for i in range(draw(st.integers(0, 6)))
    ]
    runs = []
    for i in range(draw(st.integers(0, 24))):
        lo = draw(st.integers(0, 3))
        hi = draw(st.integers(lo, lo + 4))
        namespace = draw(st.sampled_from(NAMESPACES))
        runs.append(
            RunRequest(
                key=f"{namespace}/r{i}",
                uid=f"uid-{i}",
                namespace=namespace,
                priority=draw(st.integers(0, 2)),
                preempts=draw(st.sampled_from(["namespace", "namespace", "cluster", "never"])),
                created=float(draw(st.integers(0, 5))),
                min=lo,
                max=hi,
                requested=draw(st.integers(lo, hi + 1)),
                gpus_per_worker=draw(st.sampled_from([0, 1, 1, 2, 4])),
                placement=draw(st.sampled_from(PLACEMENTS)),
                previous=draw(st.sampled_from([0, lo, hi])),
                last_scale=draw(st.sampled_from([None, 95.0, 120.0])),
                preempted=draw(st.booleans()) and draw(st.booleans()),
                priority_class=draw(st.sampled_from(CLASSES)),
            )
        )
    pods = []
    for _ in range(draw(st.integers(0, 5))):
        run = draw(st.sampled_from([None, *runs]))
        pods.append(
            PodUse(
                draw(st.sampled_from(["", *(n.name for n in nodes)])),
                draw(st.integers(0, 3)),
                run=run.key if run else None,
                owner=draw(st.sampled_from([run.uid, "other"])) if run else "",
                namespace=draw(st.sampled_from(NAMESPACES)),
                priority_class=draw(st.sampled_from(CLASSES)),
            )
        )
    quotas = []
    for i in range(draw(st.integers(0, 4))):
        only = draw(st.sampled_from([None, frozenset({"high"}), frozenset({None, "low"})]))
        namespace = draw(st.sampled_from(NAMESPACES))
        quotas.append(GpuQuota(namespace, f"q{i}", draw(st.integers(0, 10)), only))
    weights = {n: draw(st.sampled_from([1.0, 2.0, 3.0, 0.0])) for n in NAMESPACES}
    cooldown = draw(st.sampled_from([0.0, 30.0]))
    return (nodes, pods, runs, 100.0, cooldown), {"quotas": quotas, "weights": weights}


# 300 random worlds here (48 s at 800 in a loaded CI stream); `benchmarks/allocator.py --check`
# compares 500 more against the code before each speed-up
@settings(max_examples=300, deadline=None)
@given(busy_world())
def test_the_shortcuts_change_no_decision(w: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
    args, kw = w
    fast = decide_allocation(*args, **kw)
    with straightforward():
        slow = decide_allocation(*args, **kw)
    assert decision(fast) == decision(slow)


def test_a_full_cluster_and_spent_quotas_take_the_shortcuts() -> None:
    """The property above is not vacuous: on a full cluster with a long queue, the rest of the
    queue is refused without the fair order, a namespace's spent quota refuses its whole queue
    at once, and far fewer workers are placed (and given back) than the long way; the
    decision is still the reference's."""
    nodes = [Node(f"n{i}", 8) for i in range(2)]
    runs = [
        RunRequest(
            key=f"{ns}/r{i}",
            uid=f"uid-{ns}-{i}",
            namespace=ns,
            priority=0,
            created=float(i),
            min=1 + i % 2,
            max=4,
            requested=4,
            gpus_per_worker=1 + i % 3,
        )
        for ns in NAMESPACES
        for i in range(12)
    ]
    quotas = [GpuQuota("c", "gpus", 3)]
    planner, capacity = allocator._Planner, allocator._Capacity
    taken = Counter[str]()
    real_refuse, real_quotas_refuse = planner.refuse, planner.quotas_refuse

    def refuse(self: Any, runs: Any) -> None:
        taken["the rest of the queue refused"] += 1
        real_refuse(self, runs)

    def quotas_refuse(self: Any, needs: Any) -> bool:
        got: bool = real_quotas_refuse(self, needs)
        taken["a namespace's queue refused by its quotas"] += got
        return got

    with (
        mock.patch.object(planner, "refuse", refuse),
        mock.patch.object(planner, "quotas_refuse", quotas_refuse),
        mock.patch.object(capacity, "take", autospec=True, side_effect=capacity.take) as fast_take,
    ):
        fast = decide_allocation(nodes, [], runs, 100.0, quotas=quotas)
    with (
        straightforward(),
        mock.patch.object(capacity, "take", autospec=True, side_effect=_scan_take) as slow_take,
    ):
        slow = decide_allocation(nodes, [], runs, 100.0, quotas=quotas)
    assert decision(fast) == decision(slow)
    assert sum(fast.node_used.values()) == 16  # the cluster is full
    assert sum(g.reason == REASON_QUOTA_EXCEEDED for g in fast.grants.values()) > 1
    assert taken["the rest of the queue refused"] >= 1
    assert taken["a namespace's queue refused by its quotas"] >= 1
    assert fast_take.call_count * 2 < slow_take.call_count


def test_a_quota_that_refuses_one_run_keeps_the_fair_order_for_the_next() -> None:
    """A run that its namespace's quota refuses does not send the rest of the namespace's queue
    ahead of other namespaces when the quota has exactly enough left for the next one."""
    runs = [
        RunRequest("a/big", "u0", 0, 0.0, 3, 3, 3, 1, namespace="a"),
        RunRequest("b/r", "u1", 0, 1.0, 2, 2, 2, 1, namespace="b"),
        RunRequest("a/two", "u2", 0, 2.0, 2, 2, 2, 1, namespace="a"),
    ]
    a = decide_allocation([Node("n", 3)], [], runs, 100.0, quotas=[GpuQuota("a", "gpus", 2)])
    assert {k: (g.workers, g.reason) for k, g in a.grants.items()} == {
        "a/big": (0, REASON_QUOTA_EXCEEDED),
        "b/r": (2, REASON_GANG_ADMITTED),
        "a/two": (0, REASON_QUEUED),
    }
