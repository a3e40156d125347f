"""The elastic GPU allocator: the rules of issue 4, example by example, then as properties."""

from __future__ import annotations

import dataclasses
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from accordion_operator.api.trainingrun import (
    REASON_GANG_ADMITTED,
    REASON_PREEMPTED,
    REASON_QUEUED,
    REASON_UNSCHEDULABLE,
)
from accordion_operator.trainingrun.allocator import (
    Allocation,
    Node,
    Placement,
    PodUse,
    Requirement,
    RunRequest,
    Taint,
    Toleration,
    decide_allocation,
)

GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")
ANYWHERE = Placement()


def nodes(count: int, gpus: int = 8, **kw: object) -> list[Node]:
    return [Node(f"n{i:03d}", gpus, **kw) for i in range(count)]  # type: ignore[arg-type]


def run(
    key: str,
    *,
    lo: int = 1,
    hi: int = 1,
    gpus: int = 1,
    priority: int = 0,
    created: float = 0.0,
    requested: int | None = None,
    previous: int = 0,
    last_scale: float | None = None,
    placement: Placement = ANYWHERE,
    namespace: str = "",
    preempts: Literal["never", "namespace", "cluster"] = "namespace",
) -> RunRequest:
    return RunRequest(
        key=key,
        uid=f"uid-{key}",
        priority=priority,
        created=created,
        min=lo,
        max=hi,
        requested=hi if requested is None else requested,
        gpus_per_worker=gpus,
        placement=placement,
        previous=previous,
        last_scale=last_scale,
        namespace=namespace,
        preempts=preempts,
    )


def workers(a: Allocation) -> dict[str, int]:
    return {k: g.workers for k, g in a.grants.items()}


def test_gang_minimum_is_all_or_nothing() -> None:
    a = decide_allocation(nodes(1), [], [run("big", lo=9, hi=9), run("small", lo=2, hi=2)], 0)
    assert workers(a) == {"big": 0, "small": 2}
    assert a.grants["big"].reason == REASON_UNSCHEDULABLE  # 9 GPUs can never fit on 8
    a = decide_allocation(nodes(1), [], [run("a", lo=6, hi=6), run("b", lo=4, hi=4, created=1)], 0)
    assert workers(a) == {"a": 6, "b": 0}
    assert a.grants["b"].reason == REASON_QUEUED
    assert "4 free GPUs" in a.grants["b"].message


def test_fifo_within_priority_and_priority_first() -> None:
    runs = [
        run("old", lo=4, hi=4, created=1),
        run("new", lo=4, hi=4, created=2),
        run("newest", lo=4, hi=4, created=3),
    ]
    assert workers(decide_allocation(nodes(1), [], runs, 0)) == {"old": 4, "new": 4, "newest": 0}
    runs.append(run("vip", lo=4, hi=4, created=9, priority=10))
    assert workers(decide_allocation(nodes(1), [], runs, 0))["vip"] == 4


def test_fair_growth_among_equal_priority() -> None:
    runs = [run("a", lo=1, hi=8), run("b", lo=1, hi=8, created=1), run("c", lo=1, hi=2)]
    got = workers(decide_allocation(nodes(1), [], runs, 0))
    assert got == {"a": 3, "b": 3, "c": 2}


def test_requested_replicas_cap_growth() -> None:
    got = workers(decide_allocation(nodes(2), [], [run("a", lo=1, hi=8, requested=3)], 0))
    assert got == {"a": 3}


def test_higher_priority_takes_surplus_before_preempting() -> None:
    low = run("low", lo=2, hi=8, previous=8, last_scale=0)
    high = run("high", lo=6, hi=6, priority=5, created=5)
    a = decide_allocation(nodes(1), [], [low, high], now=1.0)  # even inside the cooldown
    assert workers(a) == {"low": 2, "high": 6}
    assert a.grants["low"].reason == REASON_GANG_ADMITTED


def test_preemption_is_last_resort_and_says_so() -> None:
    low = run("low", lo=4, hi=8, previous=8)
    high = run("high", lo=6, hi=6, priority=5, created=5)
    a = decide_allocation(nodes(1), [], [low, high], 0)
    assert workers(a) == {"low": 0, "high": 6}
    assert a.grants["low"].reason == REASON_PREEMPTED
    assert "priority" in a.grants["low"].message


def test_newcomer_never_evicts_an_admitted_equal() -> None:
    # "late" was admitted earlier although created later (e.g. "early" was suspended meanwhile)
    early = run("early", lo=6, hi=6, created=1)
    late = run("late", lo=6, hi=6, created=2, previous=6)
    assert workers(decide_allocation(nodes(1), [], [early, late], 0)) == {"early": 0, "late": 6}


def test_cooldown_keeps_previous_count_instead_of_fair_trim() -> None:
    a_run = run("a", lo=1, hi=8, previous=8, last_scale=100.0)
    b_run = run("b", lo=1, hi=8, created=1)
    assert workers(decide_allocation(nodes(1), [], [a_run, b_run], now=110, cooldown=30)) == {
        "a": 7,
        "b": 1,
    }
    # after the cooldown the share becomes fair
    assert workers(decide_allocation(nodes(1), [], [a_run, b_run], now=200, cooldown=30)) == {
        "a": 4,
        "b": 4,
    }


def test_a_future_last_scale_time_is_no_cooldown() -> None:
    """status.lastScaleTime is writable by the run's launcher token: a forged time in the future
    must not keep a run's surplus workers through the cooldown for ever."""
    forged = run("a", lo=1, hi=8, previous=8, last_scale=10_000.0)
    other = run("b", lo=1, hi=8)
    assert workers(decide_allocation(nodes(1), [], [forged, other], now=110, cooldown=30)) == {
        "a": 4,
        "b": 4,
    }


def test_foreign_pods_and_unschedulable_nodes_reduce_capacity() -> None:
    ns = [Node("n0", 8), Node("n1", 8, unschedulable=True)]
    pods = [PodUse("n0", 5, None), PodUse("n0", 1, "ns/a", "uid-ns/a")]  # re-planned: its own
    got = workers(decide_allocation(ns, pods, [run("ns/a", lo=1, hi=8)], 0))
    assert got == {"ns/a": 3}


def test_a_pod_with_a_runs_labels_but_another_controller_is_fixed_load() -> None:
    """A lookalike (a tenant's pod labelled as the run's, or one left by a deleted run of the
    same name) is not one of the run's workers: its GPUs are taken, not re-planned."""
    pods = [PodUse("n0", 6, "ns/a", "uid-of-an-older-ns/a")]
    got = workers(decide_allocation([Node("n0", 8)], pods, [run("ns/a", lo=1, hi=8)], 0))
    assert got == {"ns/a": 2}


def test_pods_of_runs_not_in_the_input_count_as_used() -> None:
    got = decide_allocation(nodes(1), [PodUse("n000", 8, "ns/finished")], [run("a")], 0)
    assert workers(got) == {"a": 0}


def test_taints_need_tolerations() -> None:
    ns = nodes(1, taints=(GPU_TAINT,))
    assert workers(decide_allocation(ns, [], [run("a")], 0)) == {"a": 0}
    tol = Placement(tolerations=(Toleration("nvidia.com/gpu", "Exists"),))
    assert workers(decide_allocation(ns, [], [run("a", placement=tol)], 0)) == {"a": 1}
    wrong_value = Placement(tolerations=(Toleration("nvidia.com/gpu", "Equal", "absent"),))
    assert workers(decide_allocation(ns, [], [run("a", placement=wrong_value)], 0)) == {"a": 0}
    everything = Placement(tolerations=(Toleration(None, "Exists"),))
    assert workers(decide_allocation(ns, [], [run("a", placement=everything)], 0)) == {"a": 1}
    prefer = [Node("p", 8, taints=(Taint("x", "", "PreferNoSchedule"),))]
    assert workers(decide_allocation(prefer, [], [run("a")], 0)) == {"a": 1}


def test_node_selector_and_affinity() -> None:
    ns = [Node("h100", 8, {"gpu": "h100", "rank": "3"}), Node("a10", 8, {"gpu": "a10"})]
    sel = Placement(node_selector=(("gpu", "a10"),))
    a = decide_allocation(ns, [], [run("a", lo=1, hi=16, placement=sel)], 0)
    assert workers(a) == {"a": 8}
    assert a.placements["a"] == {"a10": 8}
    aff = Placement(required_terms=((Requirement("rank", "Gt", ("2",)),),))
    a = decide_allocation(ns, [], [run("b", lo=1, hi=16, placement=aff)], 0)
    assert a.placements["b"] == {"h100": 8}
    none = Placement(required_terms=((Requirement("gpu", "NotIn", ("h100", "a10")),),))
    a = decide_allocation(ns, [], [run("c", placement=none)], 0)
    assert a.grants["c"].reason == REASON_UNSCHEDULABLE
    either = Placement(
        required_terms=((Requirement("gpu", "In", ("x",)),), (Requirement("rank", "Exists"),))
    )
    assert decide_allocation(ns, [], [run("d", placement=either)], 0).placements["d"] == {"h100": 1}


def test_best_fit_keeps_whole_nodes_for_big_workers() -> None:
    ns = [Node("a", 8), Node("b", 2)]
    runs = [run("small", lo=2, hi=2), run("big", lo=1, hi=1, gpus=8, created=1)]
    a = decide_allocation(ns, [], runs, 0)
    assert workers(a) == {"small": 2, "big": 1}
    assert a.placements["small"] == {"b": 2}


def test_zero_gpu_workers_need_only_a_matching_node() -> None:
    a = decide_allocation(nodes(1, gpus=0), [], [run("cpu", lo=3, hi=3, gpus=0)], 0)
    assert workers(a) == {"cpu": 3}


# --- properties ----------------------------------------------------------------------------------

LABELS = st.sampled_from([{}, {"gpu": "a"}, {"gpu": "b"}])
TAINTS = st.sampled_from([(), (GPU_TAINT,)])
node_st = st.builds(
    lambda i, g, labels, taints, unsched: Node(f"n{i}", g, labels, taints, unsched),
    st.integers(0, 10**6),
    st.integers(0, 8),
    LABELS,
    TAINTS,
    st.booleans(),
)
PLACEMENTS = st.sampled_from(
    [
        Placement(),
        Placement(tolerations=(Toleration("nvidia.com/gpu", "Exists"),)),
        Placement(node_selector=(("gpu", "a"),), tolerations=(Toleration(None, "Exists"),)),
    ]
)


@st.composite
def run_st(draw: st.DrawFn, i: int) -> RunRequest:
    lo = draw(st.integers(1, 4))
    hi = draw(st.integers(lo, 8))
    return RunRequest(
        key=f"r{i}",
        uid=f"uid-r{i}",
        priority=draw(st.integers(0, 2)),
        created=float(draw(st.integers(0, 5))),
        min=lo,
        max=hi,
        requested=draw(st.integers(lo, hi)),
        gpus_per_worker=draw(st.integers(1, 4)),
        placement=draw(PLACEMENTS),
        previous=draw(st.sampled_from([0, lo, hi])),
        last_scale=draw(st.sampled_from([None, 0.0, 95.0])),
    )


@st.composite
def world(draw: st.DrawFn) -> tuple[list[Node], list[PodUse], list[RunRequest]]:
    ns = draw(st.lists(node_st, max_size=8, unique_by=lambda n: n.name))
    count = draw(st.integers(0, 10))
    runs = [draw(run_st(i)) for i in range(count)]
    pods = []
    if ns:
        for _ in range(draw(st.integers(0, 4))):
            node = draw(st.sampled_from(ns))
            pods.append(PodUse(node.name, draw(st.integers(1, 3)), None))
    return ns, pods, runs


@settings(max_examples=300, deadline=None)
@given(world())
def test_never_overcommits_a_node(w: tuple[list[Node], list[PodUse], list[RunRequest]]) -> None:
    ns, pods, runs = w
    a = decide_allocation(ns, pods, runs, now=100)
    by_name = {n.name: n for n in ns}
    planned: dict[str, int] = {}
    for key, per in a.placements.items():
        g = next(r.gpus_per_worker for r in runs if r.key == key)
        assert sum(per.values()) == a.grants[key].workers
        for node, count in per.items():
            planned[node] = planned.get(node, 0) + count * g
            assert not by_name[node].unschedulable
    for node, used in planned.items():
        foreign = sum(p.gpus for p in pods if p.node == node)
        assert used <= max(0, by_name[node].gpus - foreign), node


@settings(max_examples=300, deadline=None)
@given(world())
def test_admitted_runs_get_at_least_min_and_at_most_cap(
    w: tuple[list[Node], list[PodUse], list[RunRequest]],
) -> None:
    ns, pods, runs = w
    a = decide_allocation(ns, pods, runs, now=100)
    for r in runs:
        n = a.grants[r.key].workers
        assert n == 0 or r.min <= n <= r.cap


@settings(max_examples=200, deadline=None)
@given(world())
def test_deterministic_and_order_independent(
    w: tuple[list[Node], list[PodUse], list[RunRequest]],
) -> None:
    ns, pods, runs = w
    a = decide_allocation(ns, pods, runs, now=100)
    b = decide_allocation(list(reversed(ns)), list(reversed(pods)), list(reversed(runs)), now=100)
    assert a.grants == b.grants
    assert a.placements == b.placements


@st.composite
def plain_world(draw: st.DrawFn) -> tuple[list[Node], list[PodUse], list[RunRequest]]:
    """Nodes and runs without placement constraints: one node class."""
    ns, pods, runs = draw(world())
    ns = [Node(n.name, n.gpus) for n in ns]
    runs = [
        RunRequest(
            r.key,
            r.uid,
            r.priority,
            r.created,
            r.min,
            r.max,
            r.requested,
            r.gpus_per_worker,
            ANYWHERE,
            r.previous,
            r.last_scale,
        )
        for r in runs
    ]
    return ns, pods, runs


def _granted_gpus(a: Allocation, runs: list[RunRequest]) -> int:
    return sum(a.grants[r.key].workers * r.gpus_per_worker for r in runs)


@settings(max_examples=400, deadline=None)
@given(plain_world(), st.integers(1, 8))
def test_monotone_in_capacity(
    w: tuple[list[Node], list[PodUse], list[RunRequest]], extra: int
) -> None:
    """One more node never lowers the GPUs granted in total, for workers of one size.

    (Single runs may lose admission: with the extra node an earlier gang fits and takes the
    GPUs a later, smaller run had. That is the gang rule working, so the property is the total.
    With mixed placement constraints a greedy plan is not monotone in general - bin packing -
    see test_tolerant_runs_take_the_tainted_node_first for the heuristic that keeps the common
    case right. Mixed worker sizes are bin packing too: hypothesis found a case where one more
    node lets a 3-GPU gang in first and 1 GPU fewer is granted in total, so the property is
    stated for workers of one size, the common case of a GPU pool.)
    """
    ns, pods, runs = w
    size = runs[0].gpus_per_worker if runs else 1
    runs = [dataclasses.replace(r, gpus_per_worker=size) for r in runs]
    before = decide_allocation(ns, pods, runs, now=100)
    after = decide_allocation([*ns, Node("extra", extra)], pods, runs, now=100)
    assert _granted_gpus(after, runs) >= _granted_gpus(before, runs)


def test_tolerant_runs_take_the_tainted_node_first() -> None:
    """Found by hypothesis: with a plain and a tainted node free, a tolerant run must take the
    tainted one, or a later intolerant run finds no room."""
    tol = Placement(tolerations=(Toleration("nvidia.com/gpu", "Exists"),))
    ns = [Node("a-plain", 2), Node("b-tainted", 2, taints=(GPU_TAINT,)), Node("c-plain", 1)]
    runs = [
        run("r0", created=0),
        run("r1", gpus=2, placement=tol, created=1),
        run("r2", created=2),
    ]
    a = decide_allocation(ns, [], runs, 0)
    assert workers(a) == {"r0": 1, "r1": 1, "r2": 1}
    assert a.placements["r1"] == {"b-tainted": 1}


@settings(max_examples=200, deadline=None)
@given(world())
def test_more_capacity_never_shrinks_a_run_when_all_fit(
    w: tuple[list[Node], list[PodUse], list[RunRequest]],
) -> None:
    """When every run already gets its cap, adding capacity changes nothing (no churn)."""
    ns, pods, runs = w
    before = decide_allocation(ns, pods, runs, now=100)
    if all(before.grants[r.key].workers == r.cap for r in runs):
        after = decide_allocation([*ns, Node("extra", 8)], pods, runs, now=100)
        assert after.grants == before.grants
