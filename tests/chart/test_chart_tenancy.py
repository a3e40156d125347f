"""Tenancy objects of helm/accordion: the NetworkPolicies in the runs' namespaces and the
PriorityClasses (issue 16). The policies' selectors and ports are checked against the pods the
operator's own builders make from the chart's settings, so a label or port that changes on one side
fails here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chartkit import CHART, Obj, find, helm, one, render, set_args

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.config import Config
from accordion_operator.trainingrun import builders

ON = {"networkPolicy.enabled": "true", "networkPolicy.namespaces": '["team-a","team-b"]'}
PREEMPT = "accordion.dev/preempt-other-namespaces"


def _pods(objs: list[Obj], experiment: bool = False) -> dict[str, dict[str, Any]]:
    """A launcher of its own, a launcher hosting worker 0 and a worker as the operator builds
    them with the chart's settings."""
    settings = one(objs, "ConfigMap", "acc-accordion-operator-settings")["data"]
    cfg = Config.from_env(settings)
    run = TrainingRun.model_validate(
        {
            "metadata": {
                "name": "r",
                "namespace": "team-a",
                "uid": "u",
                "labels": {"accordion.dev/experiment": "e"} if experiment else {},
            },
            "spec": {
                "model": {"builtin": "mnist-cnn"},
                "results": {
                    "endpoint": "minio:9000",
                    "bucket": "results",
                    "credentialsSecret": {"name": "s"},
                },
            },
        }
    )
    return {
        "launcher": builders.build_launcher_pod(run, cfg),
        "hosting": builders.build_launcher_pod(run, cfg, hosts_worker=cfg.launcher_hosts_worker),
        "worker": builders.build_worker_pod(run, 1, cfg),
    }


def _selects(selector: dict[str, Any], pod: dict[str, Any]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    labels = pod["metadata"]["labels"]
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "Exists", e  # the only operator the policies use
        if e["key"] not in labels:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _policies(objs: list[Obj], namespace: str) -> dict[str, Obj]:
    return {
        o["metadata"]["name"]: o
        for o in find(objs, "NetworkPolicy")
        if o["metadata"]["namespace"] == namespace
    }


def test_no_network_policy_unless_enabled(defaults: list[Obj]) -> None:
    assert find(defaults, "NetworkPolicy") == []
    # the namespaces alone do not turn it on
    assert find(render({"networkPolicy.namespaces": '["team-a"]'}), "NetworkPolicy") == []


def test_enabled_without_namespaces_fails_with_a_clear_message() -> None:
    r = helm(
        "template", "acc", str(CHART), *set_args({"networkPolicy.enabled": "true"}), check=False
    )
    assert r.returncode != 0
    assert "networkPolicy.namespaces (or watch.namespaces)" in r.stderr, r.stderr


def test_one_pair_of_policies_per_listed_namespace() -> None:
    objs = render(ON)
    for ns in ("team-a", "team-b"):
        assert sorted(_policies(objs, ns)) == [
            "acc-accordion-training",
            "acc-accordion-worker-metrics",
        ]
    assert len(find(objs, "NetworkPolicy")) == 4
    # watch.namespaces is the fallback list
    watched = render({"networkPolicy.enabled": "true", "watch.namespaces": '["team-c"]'})
    assert {o["metadata"]["namespace"] for o in find(watched, "NetworkPolicy")} == {"team-c"}
    # an explicit list wins over it
    both = render({**ON, "watch.namespaces": '["team-c"]'})
    assert {o["metadata"]["namespace"] for o in find(both, "NetworkPolicy")} == {
        "team-a",
        "team-b",
    }


@pytest.mark.parametrize("experiment", [False, True], ids=["run", "experiment-trial"])
def test_only_accordion_pods_of_the_namespace_reach_launcher_and_workers(
    experiment: bool,
) -> None:
    objs = render(ON)
    pods = _pods(objs, experiment)
    policy = _policies(objs, "team-a")["acc-accordion-training"]["spec"]
    # it isolates both pods of a run, for ingress only (egress stays open: S3, apiserver, DNS)
    assert _selects(policy["podSelector"], pods["launcher"])
    assert _selects(policy["podSelector"], pods["hosting"])
    assert _selects(policy["podSelector"], pods["worker"])
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    # a pod selector without a namespace selector: pods of the policy's own namespace only
    assert set(peer) == {"podSelector"}
    assert _selects(peer["podSelector"], pods["launcher"])
    assert _selects(peer["podSelector"], pods["worker"])
    assert not _selects(peer["podSelector"], {"metadata": {"labels": {"app": "other"}}})
    # every TCP port (SSH, then Horovod's and Gloo's dynamic ports both ways), nothing else
    assert rule["ports"] == [{"protocol": "TCP"}]
    (ssh,) = [p for p in pods["worker"]["spec"]["containers"][0]["ports"] if p["name"] == "ssh"]
    assert ssh["containerPort"] == 2222


def test_prometheus_reaches_only_the_workers_metrics_port() -> None:
    objs = render(ON)
    pods = _pods(objs)
    policy = _policies(objs, "team-b")["acc-accordion-worker-metrics"]["spec"]
    assert _selects(policy["podSelector"], pods["worker"])
    # the launcher that hosts worker 0 (the chart's default) serves the worker's metrics too
    assert pods["hosting"]["metadata"]["labels"]["accordion.dev/role"] == "launcher"
    assert _selects(policy["podSelector"], pods["hosting"])
    assert not _selects(policy["podSelector"], pods["launcher"])
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (metrics,) = [
        p for p in pods["worker"]["spec"]["containers"][0]["ports"] if p["name"] == "metrics"
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": metrics["containerPort"]}]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]


def test_metrics_port_and_prometheus_selectors_follow_the_values() -> None:
    objs = render(
        {
            **ON,
            "trainer.metricsPort": "9555",
            "networkPolicy.prometheus.namespaceSelector.matchLabels": (
                '{"kubernetes.io/metadata.name": null, "team": "observability"}'
            ),
            "networkPolicy.prometheus.podSelector": (
                '{"matchExpressions": [{"key": "app", "operator": "In", "values": ["prom"]}]}'
            ),
        }
    )
    (rule,) = _policies(objs, "team-a")["acc-accordion-worker-metrics"]["spec"]["ingress"]
    (metrics,) = [
        p for p in _pods(objs)["worker"]["spec"]["containers"][0]["ports"] if p["name"] == "metrics"
    ]
    assert metrics["containerPort"] == 9555
    assert rule["ports"] == [{"protocol": "TCP", "port": 9555}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"team": "observability"}}
    assert peer["podSelector"]["matchExpressions"] == [
        {"key": "app", "operator": "In", "values": ["prom"]}
    ]
    # without the metrics policy, the workers' metrics port is closed like every other
    closed = render({**ON, "networkPolicy.prometheus.enabled": "false"})
    assert sorted(_policies(closed, "team-a")) == ["acc-accordion-training"]


def test_priority_classes_by_default(defaults: list[Obj]) -> None:
    classes = {o["metadata"]["name"]: o for o in find(defaults, "PriorityClass")}
    assert {n: c["value"] for n, c in classes.items()} == {
        "accordion-low": -100,
        "accordion-default": 0,
        "accordion-high": 1000,
    }
    for c in classes.values():
        assert c["apiVersion"] == "scheduling.k8s.io/v1"
        assert c["globalDefault"] is False
        assert c["description"]
        assert "namespace" not in c["metadata"]
        # within the bounds of the operator's own priorities (spec.priority)
        assert -1000 <= c["value"] <= 1000
    # only the high class may preempt runs of other namespaces
    assert classes["accordion-high"]["metadata"]["annotations"] == {PREEMPT: "true"}
    assert "annotations" not in classes["accordion-low"]["metadata"]
    assert "annotations" not in classes["accordion-default"]["metadata"]


def test_priority_classes_follow_the_values() -> None:
    assert find(render({"priorityClasses.create": "false"}), "PriorityClass") == []
    custom = [
        {"name": "gpu-urgent", "value": 50000, "preemptOtherNamespaces": True},
        {"name": "gpu-batch", "value": -1000, "preemptionPolicy": "Never"},
    ]
    objs = render({"priorityClasses.classes": json.dumps(custom)})
    classes = {o["metadata"]["name"]: o for o in find(objs, "PriorityClass")}
    assert classes["gpu-urgent"]["value"] == 50000
    assert classes["gpu-urgent"]["metadata"]["annotations"] == {PREEMPT: "true"}
    assert classes["gpu-batch"]["value"] == -1000
    assert classes["gpu-batch"]["preemptionPolicy"] == "Never"
    assert "preemptionPolicy" not in classes["gpu-urgent"]
    assert "description" not in classes["gpu-batch"]
    assert "annotations" not in classes["gpu-batch"]["metadata"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"priorityClasses.classes": '[{"name": "x", "value": 1000000001}]'}, "/value"),
        ({"priorityClasses.classes": '[{"name": "system-x", "value": 1}]'}, "/name"),
        ({"priorityClasses.classes": '[{"name": "x", "value": 1, "preempt": true}]'}, "preempt"),
        (
            {"priorityClasses.classes": '[{"name": "x", "value": 1, "preemptionPolicy": "No"}]'},
            "/preemptionPolicy",
        ),
        ({"networkPolicy.namespaces": '["Team_A"]'}, "/networkPolicy/namespaces/0"),
        ({"networkPolicy.prometheus.podSelector": '{"labels": {}}'}, "'labels' not allowed"),
    ],
)
def test_schema_rejects_bad_tenancy_values(values: dict[str, str], message: str) -> None:
    r = helm("template", "acc", str(CHART), *set_args(values), check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
