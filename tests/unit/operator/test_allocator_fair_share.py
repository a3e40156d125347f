"""Namespace quotas and fair share between namespaces (issue 19, part 1): the allocator's rules
example by example, then as properties; the ResourceQuota and Namespace readers of
`trainingrun.priority`; the cache and a controller pass feeding them in."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_allocator import nodes, workers
from test_allocator import run as plain_run
from test_controller_pass import Apiserver, node

from accordion_operator.api.trainingrun import (
    REASON_GANG_ADMITTED,
    REASON_QUEUED,
    REASON_QUOTA_EXCEEDED,
)
from accordion_operator.config import Config
from accordion_operator.trainingrun.allocator import (
    Allocation,
    GpuQuota,
    Node,
    PodUse,
    RunRequest,
    decide_allocation,
)
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller
from accordion_operator.trainingrun.priority import (
    FAIR_SHARE_WEIGHT,
    fair_share_weight,
    gpu_quotas,
    quota_from,
)

GPU = "requests.nvidia.com/gpu"


def run(key: str, *, priority_class: str | None = None, **kw: Any) -> RunRequest:
    """test_allocator's run, of a priority class."""
    return dataclasses.replace(plain_run(key, **kw), priority_class=priority_class)


def q(ns: str, hard: int, name: str = "gpus", **kw: Any) -> GpuQuota:
    return GpuQuota(ns, name, hard, resource=GPU, **kw)


def in_ns(ns: str, count: int, **kw: Any) -> list[RunRequest]:
    """`count` runs of namespace `ns`, created in order (keys `ns/r00`, ...)."""
    return [
        run(f"{ns}/r{i:02d}", namespace=ns, created=float(kw.pop("created", 0)) + i, **kw)
        for i in range(count)
    ]


def by_ns(a: Allocation, runs: Sequence[RunRequest]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        out[r.namespace] = out.get(r.namespace, 0) + a.grants[r.key].workers * r.gpus_per_worker
    return out


# --- quotas --------------------------------------------------------------------------------------


def test_a_quota_caps_its_namespace_and_no_other() -> None:
    runs = [*in_ns("a", 2, lo=1, hi=8), *in_ns("b", 1, lo=1, hi=8)]
    a = decide_allocation(nodes(4), [], runs, 0, quotas=[q("a", 5)])
    assert by_ns(a, runs) == {"a": 5, "b": 8}
    assert a.namespace_gpus == {"a": 5, "b": 8}
    assert all(g.reason == REASON_GANG_ADMITTED for g in a.grants.values())


def test_a_minimum_that_does_not_fit_the_quota_left_waits_with_the_numbers() -> None:
    first = run("a/first", namespace="a", lo=3, hi=3, gpus=2)
    second = run("a/second", namespace="a", lo=2, hi=2, gpus=2, created=1)
    other = PodUse("n000", 1, namespace="a")  # a notebook of team a, say
    a = decide_allocation(nodes(2), [other], [first, second], 0, quotas=[q("a", 8)])
    assert workers(a) == {"a/first": 3, "a/second": 0}
    grant = a.grants["a/second"]
    assert grant.reason == REASON_QUOTA_EXCEEDED
    assert grant.message == (
        "ResourceQuota a/gpus allows requests.nvidia.com/gpu: 8; 7 used (6 by the minimums of "
        "runs admitted ahead of this one, 1 by other pods), the minimum of 2 workers needs 4: "
        "it waits until runs of a free that much (they finish, are suspended or deleted); or "
        "lower spec.workers.min, or ask a cluster admin to raise the quota"
    )
    # raising the quota admits it, with nothing else changed
    a = decide_allocation(nodes(2), [other], [first, second], 0, quotas=[q("a", 11)])
    assert workers(a) == {"a/first": 3, "a/second": 2}


def test_growth_stops_at_the_quota_and_the_run_stays_admitted() -> None:
    grower = run("a/g", namespace="a", lo=1, hi=8)
    a = decide_allocation(nodes(2), [], [grower], 0, quotas=[q("a", 3)])
    grant = a.grants["a/g"]
    assert (grant.workers, grant.reason) == (3, REASON_GANG_ADMITTED)
    assert grant.message == (
        "granted 3 of 8 requested workers (3 GPUs); ResourceQuota a/gpus caps "
        "requests.nvidia.com/gpu at 3"
    )
    # when the quota does not hold it back, nothing is said of it
    a = decide_allocation(nodes(1), [], [grower], 0, quotas=[q("a", 100)])
    assert a.grants["a/g"].message == "granted 8 of 8 requested workers (8 GPUs)"


def test_other_pods_count_where_the_quota_counts_them() -> None:
    """Bound or not yet bound; of the namespace and of a class the quota covers; an Accordion
    pod of a run that is not being planned (finished, suspended) too; a run's own workers are
    re-planned."""
    mine = run("a/r", namespace="a", lo=1, hi=8, priority_class="batch")
    pods = [
        PodUse("", 2, namespace="a", priority_class="batch"),  # pending: charged at creation
        PodUse("n000", 1, namespace="a", priority_class="other"),  # not covered by the quota
        PodUse("n001", 1, namespace="b", priority_class="batch"),  # another namespace
        PodUse("n000", 1, "a/old", "uid-a/old", "a", "batch"),  # a finished run's worker
        PodUse("n000", 3, "a/r", "uid-a/r", "a", "batch"),  # its own: re-planned
    ]
    quota = q("a", 8, only=frozenset({"batch"}))
    a = decide_allocation(nodes(2), pods, [mine], 0, quotas=[quota])
    assert workers(a) == {"a/r": 5}  # 8 - 2 - 1
    assert a.node_used["n000"] == 1 + 1 + 5  # the pending pod takes no node's GPUs


def test_a_quota_scoped_to_a_class_caps_that_class_only() -> None:
    high = run("a/high", namespace="a", lo=1, hi=8, priority_class="high")
    low = run("a/low", namespace="a", lo=1, hi=8, priority_class="low", created=1)
    quota = q("a", 2, name="high-gpus", only=frozenset({"high"}))
    a = decide_allocation(nodes(2), [], [high, low], 0, quotas=[quota])
    assert workers(a) == {"a/high": 2, "a/low": 8}
    # the same quota with NotIn: everything but `high`
    quota = q("a", 2, name="not-high", exclude=frozenset({"high"}))
    a = decide_allocation(nodes(2), [], [high, low], 0, quotas=[quota])
    assert workers(a) == {"a/high": 8, "a/low": 2}


def test_every_quota_that_counts_a_run_holds() -> None:
    r = run("a/r", namespace="a", lo=1, hi=16, priority_class="high")
    quotas = [q("a", 10, name="all"), q("a", 4, name="high-only", only=frozenset({"high"}))]
    a = decide_allocation(nodes(2), [], [r], 0, quotas=quotas)
    assert workers(a) == {"a/r": 4}
    assert "ResourceQuota a/high-only caps" in a.grants["a/r"].message


def test_a_higher_priority_minimum_takes_the_quota_first() -> None:
    low = run("a/low", namespace="a", lo=4, hi=4, previous=4, created=0)
    high = run("a/high", namespace="a", lo=4, hi=4, priority=10, created=1)
    a = decide_allocation(nodes(2), [], [low, high], 0, quotas=[q("a", 6)])
    assert workers(a) == {"a/low": 0, "a/high": 4}
    assert a.grants["a/low"].reason == REASON_QUOTA_EXCEEDED
    assert "4 used (4 by the minimums of runs admitted ahead" in a.grants["a/low"].message


def test_a_quota_lowered_below_use_shrinks_surplus_then_the_newest_minimums() -> None:
    runs = [
        run("a/old", namespace="a", lo=2, hi=4, previous=4, last_scale=0.0, created=0),
        run("a/new", namespace="a", lo=2, hi=4, previous=4, last_scale=0.0, created=1),
    ]
    # even inside the cooldown: the quota is a hard cap
    a = decide_allocation(nodes(1), [], runs, 10, cooldown=30, quotas=[q("a", 5)])
    assert workers(a) == {"a/old": 3, "a/new": 2}
    a = decide_allocation(nodes(1), [], runs, 10, cooldown=30, quotas=[q("a", 3)])
    assert workers(a) == {"a/old": 3, "a/new": 0}
    assert a.grants["a/new"].reason == REASON_QUOTA_EXCEEDED


def test_zero_gpu_workers_are_not_capped_by_a_gpu_quota() -> None:
    a = decide_allocation(
        nodes(1, gpus=0), [], [run("a/cpu", namespace="a", lo=2, hi=3, gpus=0)], 0,
        quotas=[q("a", 0)],
    )  # fmt: skip
    assert workers(a) == {"a/cpu": 3}


# --- fair share ----------------------------------------------------------------------------------


def test_one_namespaces_many_runs_do_not_starve_anothers_single_run() -> None:
    many = in_ns("a", 50, lo=1, hi=8)
    single = run("b/one", namespace="b", lo=1, hi=64, created=100)
    a = decide_allocation(nodes(16), [], [*many, single], 0)
    assert by_ns(a, [*many, single]) == {"a": 64, "b": 64}
    # within a namespace, today's water-filling: a's 50 runs share its 64 GPUs as 1 or 2 each
    assert sorted(a.grants[r.key].workers for r in many) == [1] * 36 + [2] * 14
    # minimums are not taken back for fairness: on 64 GPUs, a keeps its 50 minimums and b's
    # run grows into the rest
    a = decide_allocation(nodes(8), [], [*many, single], 0)
    assert by_ns(a, [*many, single]) == {"a": 50, "b": 14}


def test_surplus_follows_the_weights() -> None:
    runs = [*in_ns("a", 3, lo=1, hi=64), *in_ns("b", 3, lo=1, hi=64), *in_ns("c", 1, lo=1, hi=64)]
    a = decide_allocation(nodes(6), [], runs, 0, weights={"a": 2.0, "b": 1.0, "c": 1.0})
    assert by_ns(a, runs) == {"a": 24, "b": 12, "c": 12}


def test_a_weight_that_is_not_a_positive_number_counts_as_one() -> None:
    runs = [*in_ns("a", 1, lo=1, hi=64), *in_ns("b", 1, lo=1, hi=64)]
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        a = decide_allocation(nodes(2), [], runs, 0, weights={"a": bad})
        assert by_ns(a, runs) == {"a": 8, "b": 8}, bad


def test_a_namespace_capped_by_its_quota_leaves_its_share_to_the_others() -> None:
    runs = [*in_ns("a", 2, lo=1, hi=64), *in_ns("b", 2, lo=1, hi=64), *in_ns("c", 2, lo=1, hi=64)]
    a = decide_allocation(nodes(3), [], runs, 0, quotas=[q("a", 2)])
    assert by_ns(a, runs) == {"a": 2, "b": 11, "c": 11}


def test_waiting_minimums_are_admitted_in_fair_order_between_namespaces() -> None:
    """Namespace a submitted 10 runs before b's one; with room for 6 minimums, b's run is
    admitted as soon as a holds more than b (fair order), not after a's ten (FIFO)."""
    runs = [*in_ns("a", 10, lo=1, hi=1), run("b/late", namespace="b", created=50)]
    a = decide_allocation(nodes(1, gpus=6), [], runs, 0)
    assert a.grants["b/late"].workers == 1
    assert [a.grants[f"a/r{i:02d}"].workers for i in range(10)] == [1] * 5 + [0] * 5
    assert a.grants["a/r05"].reason == REASON_QUEUED
    # the weights count: b already holds 1 GPU; at equal weights, b's next run comes after
    # two of a's; with a at weight 10, after all of a's that fit
    held = run("b/held", namespace="b", previous=1)
    got = workers(decide_allocation(nodes(1, gpus=6), [], [held, *runs], 0))
    assert [k for k, n in got.items() if n] == [
        "b/held",
        "a/r00",
        "a/r01",
        "a/r02",
        "a/r03",
        "b/late",
    ]
    got = workers(decide_allocation(nodes(1, gpus=6), [], [held, *runs], 0, weights={"a": 10}))
    assert got["b/late"] == 0
    assert sum(got.values()) == 6


def test_fairness_orders_the_queue_but_preempts_no_admitted_run() -> None:
    held = [run(f"a/r{i}", namespace="a", previous=1, created=i) for i in range(6)]
    late = run("b/late", namespace="b", created=50)
    a = decide_allocation(nodes(1, gpus=6), [], [*held, late], 0)
    assert a.grants["b/late"].reason == REASON_QUEUED
    assert all(a.grants[r.key].workers == 1 for r in held)


def test_one_namespace_only_is_todays_allocation() -> None:
    """Fair share changes nothing when every run is of one namespace (property below)."""
    runs = [run("x", lo=1, hi=8), run("y", lo=1, hi=8, created=1), run("z", lo=1, hi=2)]
    assert workers(decide_allocation(nodes(1), [], runs, 0)) == {"x": 3, "y": 3, "z": 2}


# --- properties ----------------------------------------------------------------------------------

NAMESPACES = ("a", "b", "c", "d")
CLASSES = (None, "low", "high")


@st.composite
def quota_world(
    draw: st.DrawFn,
) -> tuple[list[Node], list[PodUse], list[RunRequest], list[GpuQuota], dict[str, float]]:
    """Nodes of mixed sizes, other pods (some unbound), runs of several namespaces and priority
    classes with mixed worker sizes, priorities, previous grants and cooldowns; unscoped and
    class-scoped quotas; weights."""
    ns = [Node(f"n{i}", draw(st.integers(0, 8))) for i in range(draw(st.integers(0, 6)))]
    runs = []
    for i in range(draw(st.integers(0, 14))):
        lo = draw(st.integers(1, 3))
        hi = draw(st.integers(lo, 8))
        namespace = draw(st.sampled_from(NAMESPACES))
        runs.append(
            RunRequest(
                key=f"{namespace}/r{i}",
                uid=f"uid-{i}",
                namespace=namespace,
                priority=draw(st.integers(0, 1)),
                created=float(draw(st.integers(0, 5))),
                min=lo,
                max=hi,
                requested=hi,
                gpus_per_worker=draw(st.integers(1, 3)),
                previous=draw(st.sampled_from([0, lo, hi])),
                last_scale=draw(st.sampled_from([None, 95.0])),
                priority_class=draw(st.sampled_from(CLASSES)),
            )
        )
    pods = [
        PodUse(
            draw(st.sampled_from(["", *(n.name for n in ns)])),
            draw(st.integers(1, 3)),
            namespace=draw(st.sampled_from(NAMESPACES)),
            priority_class=draw(st.sampled_from(CLASSES)),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    quotas = []
    for i in range(draw(st.integers(0, 5))):
        only = draw(st.sampled_from([None, frozenset({"high"}), frozenset({None, "low"})]))
        exclude = draw(st.sampled_from([frozenset(), frozenset({None})]))
        namespace = draw(st.sampled_from(NAMESPACES))
        quotas.append(GpuQuota(namespace, f"q{i}", draw(st.integers(0, 12)), only, exclude))
    weights = {n: float(draw(st.integers(1, 4))) for n in NAMESPACES}
    return ns, pods, runs, quotas, weights


def _counted(quota: GpuQuota, a: Allocation, runs: Sequence[RunRequest]) -> int:
    return sum(
        a.grants[r.key].workers * r.gpus_per_worker
        for r in runs
        if r.namespace == quota.namespace and quota.covers(r.priority_class)
    )


@settings(max_examples=400, deadline=None)
@given(quota_world())
def test_no_namespace_ever_exceeds_a_quota(
    w: tuple[list[Node], list[PodUse], list[RunRequest], list[GpuQuota], dict[str, float]],
) -> None:
    """Whatever the rest: what a quota counts (other pods and the runs' grants) stays within its
    hard limit, unless other pods alone already exceed it (then the runs it covers get none)."""
    ns, pods, runs, quotas, weights = w
    a = decide_allocation(ns, pods, runs, now=100, quotas=quotas, weights=weights)
    for quota in quotas:
        other = sum(
            p.gpus
            for p in pods
            if p.namespace == quota.namespace and quota.covers(p.priority_class)
        )
        assert _counted(quota, a, runs) <= max(0, quota.hard - other), quota
    for r in runs:
        n = a.grants[r.key].workers
        assert n == 0 or r.min <= n <= r.cap


@settings(max_examples=200, deadline=None)
@given(quota_world())
def test_quotas_and_weights_keep_the_decision_deterministic(
    w: tuple[list[Node], list[PodUse], list[RunRequest], list[GpuQuota], dict[str, float]],
) -> None:
    ns, pods, runs, quotas, weights = w
    a = decide_allocation(ns, pods, runs, now=100, quotas=quotas, weights=weights)
    b = decide_allocation(
        ns[::-1], pods[::-1], runs[::-1], now=100, quotas=quotas[::-1], weights=weights
    )
    assert a.grants == b.grants
    assert a.placements == b.placements


@st.composite
def demand_world(draw: st.DrawFn) -> tuple[list[Node], list[RunRequest], dict[str, float], int]:
    """The preconditions of the fair-share properties: nodes of one class whose sizes are
    multiples of `g` (no GPU is ever stranded), every run's workers `g` GPUs, one priority, no
    cooldown, no quota; every namespace has a run that could take the whole cluster (enough
    demand) and minimums of one worker per run."""
    g = draw(st.sampled_from([1, 2]))
    ns = [Node(f"n{i}", g * draw(st.integers(1, 4))) for i in range(draw(st.integers(1, 6)))]
    total = sum(n.gpus for n in ns)
    runs = []
    namespaces = NAMESPACES[: draw(st.integers(2, 4))]
    for namespace in namespaces:
        for i in range(draw(st.integers(1, 5))):
            runs.append(
                RunRequest(
                    key=f"{namespace}/r{i}",
                    uid=f"uid-{namespace}-{i}",
                    namespace=namespace,
                    priority=0,
                    created=float(draw(st.integers(0, 9))),
                    min=1,
                    max=total,  # each run alone could take every GPU
                    requested=draw(st.sampled_from([1, total])) if i else total,
                    gpus_per_worker=g,
                    previous=draw(st.sampled_from([0, 1])),
                )
            )
    weights = {n: float(draw(st.integers(1, 4))) for n in namespaces}
    return ns, runs, weights, g


@settings(max_examples=400, deadline=None)
@given(demand_world())
def test_equal_weights_share_within_one_worker(
    w: tuple[list[Node], list[RunRequest], dict[str, float], int],
) -> None:
    """Equal weights, enough demand everywhere (demand_world's preconditions), and no
    namespace's minimums above an equal share: namespaces' GPUs differ by at most one worker's
    GPUs, and every GPU is granted."""
    ns, runs, _, g = w
    total = sum(n.gpus for n in ns)
    names = {r.namespace for r in runs}
    minimums = {n: sum(r.min * g for r in runs if r.namespace == n) for n in names}
    assume(sum(minimums.values()) <= total)
    assume(all(m * len(names) <= total for m in minimums.values()))
    a = decide_allocation(ns, [], runs, now=100)
    shares = by_ns(a, runs)
    assert set(shares) == names
    assert sum(shares.values()) == total
    assert max(shares.values()) - min(shares.values()) <= g, shares


@settings(max_examples=400, deadline=None)
@given(demand_world())
def test_weights_are_respected_within_one_worker(
    w: tuple[list[Node], list[RunRequest], dict[str, float], int],
) -> None:
    """With any weights (same preconditions): a namespace that got workers above its minimums
    holds, less its last worker, no more per unit of weight than any other namespace holds -
    every namespace still wants more - so shares are proportional to the weights within one
    worker's GPUs: GPUs(x) - g <= GPUs(y) * weight(x) / weight(y)."""
    ns, runs, weights, g = w
    total = sum(n.gpus for n in ns)
    minimums: dict[str, int] = {}
    for r in runs:
        minimums[r.namespace] = minimums.get(r.namespace, 0) + r.min * g
    assume(sum(minimums.values()) <= total)
    a = decide_allocation(ns, [], runs, now=100, weights=weights)
    shares = by_ns(a, runs)
    assert sum(shares.values()) == total
    for x, gx in shares.items():
        if gx == minimums[x]:
            continue  # no surplus: fairness gave it nothing to compare
        for y, gy in shares.items():
            assert (gx - g) / weights[x] <= gy / weights[y], (x, y, shares, weights)


@settings(max_examples=200, deadline=None)
@given(quota_world())
def test_one_namespace_and_no_quota_is_the_allocation_without_them(
    w: tuple[list[Node], list[PodUse], list[RunRequest], list[GpuQuota], dict[str, float]],
) -> None:
    """All runs of one namespace, no quota: weights change nothing (the allocation before
    issue 19)."""
    ns, pods, runs, _, weights = w
    one = [dataclasses.replace(r, namespace="a", key=f"a/{r.key}") for r in runs]
    assert decide_allocation(ns, pods, one, now=100).grants == (
        decide_allocation(ns, pods, one, now=100, weights=weights).grants
    )


# --- the inputs: ResourceQuotas and Namespaces ---------------------------------------------------


def rq(name: str, hard: Mapping[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "a"}, "spec": {"hard": dict(hard), **spec}}


def selector(op: str, *values: str) -> dict[str, Any]:
    expr: dict[str, Any] = {"scopeName": "PriorityClass", "operator": op}
    if values:
        expr["values"] = list(values)
    return {"scopeSelector": {"matchExpressions": [expr]}}


@pytest.mark.parametrize(
    ("spec", "covered"),
    [
        ({}, {None, "low", "high"}),
        (selector("In", "high"), {"high"}),
        (selector("NotIn", "high"), {None, "low"}),
        (selector("Exists"), {"low", "high"}),
        (selector("DoesNotExist"), {None}),
        ({"scopes": ["PriorityClass"]}, {"low", "high"}),
        ({"scopes": ["NotTerminating"]}, {None, "low", "high"}),
        ({"scopes": ["BestEffort"]}, set()),  # counts no pod of a run (they have requests)
        ({"scopes": ["Terminating"]}, set()),  # nor this (no activeDeadlineSeconds)
    ],
)
def test_which_pods_a_gpu_quota_counts(spec: dict[str, Any], covered: set[str | None]) -> None:
    found = gpu_quotas([quota_from(rq("g", {GPU: "8"}, **spec))], "nvidia.com/gpu")
    assert {c for c in (None, "low", "high") if any(f.covers(c) for f in found)} == covered
    assert all(f.hard == 8 for f in found)
    assert all(f.resource == GPU for f in found)


def test_a_raised_quota_counts_once_the_apiserver_enforces_it() -> None:
    """The apiserver admits pods against status.hard, which the quota controller updates a
    moment after spec.hard changes: the lower of the two is the cap."""
    raised = {**rq("g", {GPU: "8"}), "status": {"hard": {GPU: "4"}, "used": {GPU: "4"}}}
    assert [g.hard for g in gpu_quotas([quota_from(raised)], "nvidia.com/gpu")] == [4]
    lowered = {**rq("g", {GPU: "2"}), "status": {"hard": {GPU: "4"}}}
    assert [g.hard for g in gpu_quotas([quota_from(lowered)], "nvidia.com/gpu")] == [2]
    synced = {**rq("g", {GPU: "8"}), "status": {"hard": {GPU: "8"}}}
    assert [g.hard for g in gpu_quotas([quota_from(synced)], "nvidia.com/gpu")] == [8]


def test_only_quotas_on_the_configured_gpu_resource_count() -> None:
    quotas = [
        quota_from(rq("pods", {"pods": "10"})),
        quota_from(rq("nvidia", {GPU: "4"})),
        quota_from(rq("amd", {"requests.amd.com/gpu": "2"})),
        quota_from(rq("odd", {GPU: "1e3"})),  # a form not read: left to the apiserver
    ]
    assert [g.name for g in gpu_quotas(quotas, "nvidia.com/gpu")] == ["nvidia"]
    assert [g.name for g in gpu_quotas(quotas, "amd.com/gpu")] == ["amd"]


@pytest.mark.parametrize(
    ("meta", "weight", "refused"),
    [
        ({}, 1.0, False),
        ({"annotations": {FAIR_SHARE_WEIGHT: "3"}}, 3.0, False),
        ({"labels": {FAIR_SHARE_WEIGHT: "0.5"}}, 0.5, False),
        ({"annotations": {FAIR_SHARE_WEIGHT: "2"}, "labels": {FAIR_SHARE_WEIGHT: "5"}}, 2.0, False),
        ({"annotations": {FAIR_SHARE_WEIGHT: "lots"}}, 1.0, True),
        ({"annotations": {FAIR_SHARE_WEIGHT: "0"}}, 1.0, True),
        ({"annotations": {FAIR_SHARE_WEIGHT: "-1"}}, 1.0, True),
        ({"annotations": {FAIR_SHARE_WEIGHT: "nan"}}, 1.0, True),
        ({"annotations": {FAIR_SHARE_WEIGHT: "inf"}}, 1.0, True),
        ({"annotations": {FAIR_SHARE_WEIGHT: "1e9"}}, 1.0, True),
    ],
)
def test_a_namespace_weight_is_validated(
    meta: dict[str, Any], weight: float, refused: bool
) -> None:
    got, why = fair_share_weight(meta)
    assert got == weight
    assert (why is not None) == refused


def namespace(name: str, weight: str | None) -> dict[str, Any]:
    annotations = {FAIR_SHARE_WEIGHT: weight} if weight is not None else {}
    return {"metadata": {"name": name, "annotations": annotations}}


def test_the_cache_keeps_weights_and_logs_a_bad_one_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = ClusterCache(Config())
    cache.apply("namespace", "ADDED", namespace("a", "2"))
    cache.apply("namespace", "ADDED", namespace("b", None))
    assert cache.weights == {"a": 2.0}
    with caplog.at_level(logging.WARNING, logger="accordion.cache"):
        for _ in range(3):
            cache.apply("namespace", "MODIFIED", namespace("a", "two"))
    assert cache.weights == {}
    assert len([r for r in caplog.records if "fair-share-weight" in r.getMessage()]) == 1
    cache.apply("namespace", "MODIFIED", namespace("a", "4"))
    cache.apply("namespace", "ADDED", namespace("c", "3"))
    cache.replace_all("namespace", [namespace("a", "4")])  # c went away
    assert cache.weights == {"a": 4.0}
    cache.apply("namespace", "DELETED", namespace("a", "4"))
    assert cache.weights == {}


def test_the_cache_knows_which_namespaces_are_being_deleted() -> None:
    """Their runs get no grant (controller): they are going, and their pods cannot be created,
    so they must not hold GPUs another namespace's runs could use."""
    cache = ClusterCache(Config())
    cache.apply("namespace", "ADDED", namespace("a", None))
    going = namespace("b", None)
    cache.apply("namespace", "ADDED", going)
    assert cache.terminating == set()
    going["metadata"]["deletionTimestamp"] = "2026-12-02T15:00:00Z"
    going["status"] = {"phase": "Terminating"}
    cache.apply("namespace", "MODIFIED", going)
    assert cache.terminating == {"b"}
    cache.apply("namespace", "DELETED", going)
    assert cache.terminating == set()
    cache.apply("namespace", "MODIFIED", going)
    cache.replace_all("namespace", [namespace("a", None)])  # b went while the watch was down
    assert cache.terminating == set()


def test_a_quotas_status_update_is_no_policy_change() -> None:
    """status.used moves with every pod created: runs' resolved priorities must stay cached."""
    cache = ClusterCache(Config())
    body = rq("g", {GPU: "8"})
    cache.apply("quota", "ADDED", body)
    version = cache.policy_version
    cache.apply("quota", "MODIFIED", {**body, "status": {"hard": {GPU: "8"}}})
    version = cache.policy_version
    cache.apply("quota", "MODIFIED", {**body, "status": {"hard": {GPU: "8"}, "used": {GPU: "3"}}})
    assert cache.policy_version == version
    cache.apply("quota", "MODIFIED", {**rq("g", {GPU: "9"}), "status": {"hard": {GPU: "8"}}})
    assert cache.policy_version == version + 1


async def test_a_pass_caps_a_namespace_at_its_quota_and_says_so() -> None:
    """The cache's ResourceQuotas reach the allocator through a controller pass: a quota of 1
    GPU admits the first run of team-a; the second waits with QuotaExceeded (and one Warning
    Event), and is admitted once the quota is raised."""
    cfg = Config()
    cache = ClusterCache(cfg)
    cache.apply("node", "ADDED", node("n1", 8))
    api = Apiserver(cache)
    ctl = Controller(cfg, api, cache)  # type: ignore[arg-type]
    quota = {"metadata": {"name": "gpus", "namespace": "team-a"}, "spec": {"hard": {GPU: "1"}}}
    cache.apply("quota", "ADDED", quota)
    api.add_run("first", "2026-01-01T00:00:00Z")
    api.add_run("second", "2026-01-01T00:01:00Z")
    await ctl.reconcile_all()
    for name in ("first", "second"):
        cache.apply("run", "MODIFIED", api.runs[name])
    await ctl.reconcile_all()

    def admitted(name: str) -> dict[str, Any]:
        conds = api.runs[name]["status"]["conditions"]
        return dict(next(c for c in conds if c["type"] == "Admitted"))

    assert admitted("first")["status"] == "True"
    assert admitted("second")["reason"] == REASON_QUOTA_EXCEEDED
    assert (
        "ResourceQuota team-a/gpus allows requests.nvidia.com/gpu: 1; 1 used"
        in (admitted("second")["message"])
    )
    assert api.writes.count(("event QuotaExceeded", "second")) == 1
    cache.apply("quota", "MODIFIED", {**quota, "spec": {"hard": {GPU: "2"}}})
    await ctl.reconcile_all()
    assert admitted("second")["status"] == "True"
