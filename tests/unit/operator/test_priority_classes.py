"""Priority from PriorityClasses and who may preempt whom (issue 16, item 4): the pure parts,
`trainingrun.priority` and the allocator's cross-namespace rule."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import pytest
from test_allocator import nodes, run, workers

from accordion_operator.trainingrun.allocator import RunRequest, decide_allocation
from accordion_operator.trainingrun.priority import (
    ANNOTATION_PREEMPT_OTHER_NAMESPACES,
    Priority,
    PriorityClassInfo,
    class_from,
    parse_quantity,
    quota_from,
    quota_refusal,
    resolve,
)


def pc(name: str, value: int, **extra: Any) -> dict[str, Any]:
    annotations = extra.pop("annotations", {})
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name, "annotations": annotations},
        "value": value,
        **extra,
    }


def quota(name: str, hard: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a"}, "spec": {"hard": hard, **spec}}


def only_for(*classes: str) -> dict[str, Any]:
    expr = {"scopeName": "PriorityClass", "operator": "In", "values": list(classes)}
    return {"scopeSelector": {"matchExpressions": [expr]}}


def test_a_class_gives_its_value_and_its_preemption_scope() -> None:
    classes = {
        "team": class_from(pc("team", 100)),
        "prod": class_from(
            pc("prod", 1000, annotations={ANNOTATION_PREEMPT_OTHER_NAMESPACES: "true"})
        ),
        "polite": class_from(pc("polite", 500, preemptionPolicy="Never")),
    }
    assert resolve("team", classes) == Priority(100, "namespace", "team")
    assert resolve("prod", classes) == Priority(1000, "cluster", "prod")
    assert resolve("polite", classes) == Priority(500, "never", "polite")
    # no class named: the globalDefault's, as the Priority admission gives pods; else 0
    assert resolve(None, classes) == Priority()
    classes["base"] = class_from(pc("base", -5, globalDefault=True))
    assert resolve(None, classes) == Priority(-5, "namespace", "base")


def test_a_missing_class_is_a_reason_naming_the_ones_there_are() -> None:
    got = resolve("gold", {"team": PriorityClassInfo("team", 1)})
    assert isinstance(got, tuple)
    reason, message = got
    assert reason == "PriorityClassNotFound"
    assert "'gold'" in message
    assert "team" in message


@pytest.mark.parametrize("value", [True, "9", None, 1.5])
def test_a_value_that_is_not_an_integer_counts_as_zero(value: object) -> None:
    assert class_from(pc("odd", 0) | {"value": value}).value == 0


def test_a_quota_scoped_to_a_class_forbids_that_class_only() -> None:
    forbid = [quota_from(quota("no-high", {"pods": "0"}, **only_for("high")))]
    refusal = quota_refusal(forbid, "high", pods=2, gpus=1, gpu_resource="nvidia.com/gpu")
    assert refusal is not None
    reason, message = refusal
    assert reason == "QuotaExceeded"
    assert "team-a/no-high" in message
    assert "pods: 0" in message
    assert "'high'" in message
    assert quota_refusal(forbid, "low", pods=2, gpus=1, gpu_resource="nvidia.com/gpu") is None
    assert quota_refusal(forbid, None, pods=2, gpus=1, gpu_resource="nvidia.com/gpu") is None


def test_a_gpu_quota_smaller_than_the_minimum_is_refused_before_anything_starts() -> None:
    q = [quota_from(quota("gpus", {"requests.nvidia.com/gpu": "4"}))]
    assert quota_refusal(q, None, pods=5, gpus=4, gpu_resource="nvidia.com/gpu") is None
    refusal = quota_refusal(q, None, pods=9, gpus=8, gpu_resource="nvidia.com/gpu")
    assert refusal is not None
    assert "needs 8" in refusal[1]


@pytest.mark.parametrize(
    ("spec", "applies"),
    [
        ({"scopes": ["PriorityClass"]}, True),  # any class
        ({"scopes": ["NotTerminating"]}, True),
        ({"scopes": ["BestEffort"]}, False),  # left to the apiserver
        (
            {
                "scopeSelector": {
                    "matchExpressions": [{"scopeName": "PriorityClass", "operator": "Exists"}]
                }
            },
            True,
        ),
        (
            {
                "scopeSelector": {
                    "matchExpressions": [
                        {"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}
                    ]
                }
            },
            False,
        ),
    ],
)
def test_scopes(spec: dict[str, Any], applies: bool) -> None:
    q = [quota_from(quota("q", {"pods": "1"}, **spec))]
    refused = quota_refusal(q, "high", pods=2, gpus=1, gpu_resource="nvidia.com/gpu")
    assert (refused is not None) == applies


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0), ("4", 4), ("1k", 1000), ("2Ki", 2048), ("500m", 0.5), ("1e3", None), (None, None)],
)
def test_quantities(text: str | None, number: float | None) -> None:
    assert parse_quantity(text) == number


# --- the allocator: who may preempt whom --------------------------------------------------------


def req(
    key: str,
    ns: str,
    *,
    lo: int,
    hi: int | None = None,
    preempts: Literal["never", "namespace", "cluster"] = "namespace",
    **kw: Any,
) -> RunRequest:
    """A one-GPU-per-worker run of namespace `ns` (`test_allocator.run`)."""
    return run(key, lo=lo, hi=hi or lo, namespace=ns, preempts=preempts, **kw)


def test_a_team_class_preempts_its_own_namespace_only() -> None:
    """One 8-GPU node held by a low run of team-a: team-b's high run (a class without the
    annotation) waits; team-a's own high run preempts it."""
    low = req("low", "team-a", lo=8, previous=8)
    other = req("other", "team-b", lo=6, priority=100, created=5)
    a = decide_allocation(nodes(1), [], [low, other], 0)
    assert workers(a) == {"low": 8, "other": 0}
    assert a.grants["other"].reason == "WaitingForGPUs"
    own = req("own", "team-a", lo=6, priority=100, created=5)
    a = decide_allocation(nodes(1), [], [low, own], 0)
    assert workers(a) == {"low": 0, "own": 6}
    assert a.grants["low"].reason == "PreemptedByHigherPriority"


def test_a_cluster_class_preempts_any_namespace_and_a_never_class_nobody() -> None:
    low = req("low", "team-a", lo=8, previous=8)
    prod = req("prod", "ops", lo=6, priority=1000, preempts="cluster", created=5)
    assert workers(decide_allocation(nodes(1), [], [low, prod], 0)) == {"low": 0, "prod": 6}
    polite = req("polite", "team-a", lo=6, priority=1000, preempts="never", created=5)
    assert workers(decide_allocation(nodes(1), [], [low, polite], 0)) == {"low": 8, "polite": 0}


def test_a_team_class_jumps_the_queue_but_grows_with_everyone() -> None:
    """Queue order across namespaces still follows priority (nothing admitted is taken), but
    the surplus of a class that may not preempt other namespaces competes at level 0: it does
    not take other teams' elastic workers to grow first."""
    waiting = req("waiting", "team-a", lo=4, created=1)
    vip = req("vip", "team-b", lo=4, priority=100, created=2)
    small = nodes(1, gpus=4)
    assert workers(decide_allocation(small, [], [waiting, vip], 0)) == {"waiting": 0, "vip": 4}
    a = req("a", "team-a", lo=1, hi=8, previous=4)
    b = req("b", "team-b", lo=1, hi=8, priority=100, previous=4)
    assert workers(decide_allocation(nodes(1), [], [a, b], 0)) == {"a": 4, "b": 4}
    b_prod = req("b", "team-b", lo=1, hi=8, priority=100, preempts="cluster", previous=4)
    assert workers(decide_allocation(nodes(1), [], [a, b_prod], 0)) == {"a": 1, "b": 7}


def test_a_preempted_run_says_so_until_it_is_admitted_again() -> None:
    """The pass after the preemption the run is no longer admitted (previous 0): its reason
    must still say preempted, not turn into an ordinary wait."""
    high = req("high", "team-a", lo=6, priority=100)
    low = req("low", "team-a", lo=8, previous=0)
    assert decide_allocation(nodes(1), [], [low, high], 0).grants["low"].reason == (
        "WaitingForGPUs"
    )
    low = dataclasses.replace(low, preempted=True)
    assert decide_allocation(nodes(1), [], [low, high], 0).grants["low"].reason == (
        "PreemptedByHigherPriority"
    )
