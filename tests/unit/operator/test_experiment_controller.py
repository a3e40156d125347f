"""The Experiment controller's cache and its pure pass (`plans`): no cluster, no I/O."""

from __future__ import annotations

import copy
from typing import Any

from experiment_factory import BASE
from prometheus_client import generate_latest

from accordion_operator.config import Config
from accordion_operator.core.objects import LABEL_EXPERIMENT
from accordion_operator.experiment.cache import ExperimentCache, fingerprint
from accordion_operator.experiment.controller import ExperimentController
from accordion_operator.experiment.decide import decide_all
from accordion_operator.experiment.trials import ANNOTATION_STOPPED
from accordion_operator.metrics import OperatorMetrics

NOW = 1_700_000_000.0


def exp_body(rv: int = 1) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["metadata"]["resourceVersion"] = str(rv)
    return body


def run_body(name: str, rv: int, owner: str = "exp-uid", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "resourceVersion": str(rv),
            "labels": {LABEL_EXPERIMENT: "mnist-lr"},
            "annotations": {
                "accordion.dev/trial": name.rsplit("-", 1)[1].lstrip("0") or "0",
                "accordion.dev/parameters": '{"learning_rate": 0.01}',
            },
            "ownerReferences": [{"kind": "Experiment", "uid": owner, "name": "mnist-lr"}],
        },
        "spec": {},
        "status": status,
    }


def test_cache_keeps_the_newest_copy_and_forgets_deleted() -> None:
    cache = ExperimentCache()
    cache.apply("run", "ADDED", run_body("mnist-lr-000", 5))
    cache.apply("run", "MODIFIED", run_body("mnist-lr-000", 4, phase="Failed"))  # older: ignored
    assert cache.trials_of("team-a", "mnist-lr")[0]["metadata"]["resourceVersion"] == "5"
    assert cache.dirty.is_set()
    unlabelled = run_body("other-000", 9)
    del unlabelled["metadata"]["labels"]
    cache.apply("run", "ADDED", unlabelled)
    assert len(cache.trials_of("team-a", "mnist-lr")) == 1
    cache.apply("run", "DELETED", run_body("mnist-lr-000", 6))
    assert cache.trials == {}


def test_a_listing_does_not_undo_a_newer_watch_event() -> None:
    """At start the seeding LIST races the watch: a newer copy that arrived first stays, and an
    object created after the listing was taken is not dropped."""
    cache = ExperimentCache()
    cache.apply("run", "MODIFIED", run_body("mnist-lr-000", 20, phase="Succeeded"))
    cache.apply("run", "ADDED", run_body("mnist-lr-002", 30))
    cache.apply("run", "ADDED", run_body("mnist-lr-009", 3))  # gone: not in the listing
    cache.replace_all("run", [run_body("mnist-lr-000", 10), run_body("mnist-lr-001", 11)])
    runs = {b["metadata"]["name"]: b for b in cache.trials_of("team-a", "mnist-lr")}
    assert sorted(runs) == ["mnist-lr-000", "mnist-lr-001", "mnist-lr-002"]
    assert runs["mnist-lr-000"]["status"] == {"phase": "Succeeded"}


def test_pass_decides_only_on_changed_observations_and_only_owned_runs() -> None:
    cache = ExperimentCache()
    cache.apply("experiment", "ADDED", exp_body())
    cache.apply("run", "ADDED", run_body("mnist-lr-000", 2, phase="Running"))
    cache.apply("run", "ADDED", run_body("mnist-lr-001", 3, owner="someone-else"))
    ctl = ExperimentController(Config(), None, cache)  # type: ignore[arg-type]  # no I/O here
    ((_, plan),) = ctl.plans(NOW)
    # the foreign run does not count: trial 1 is still to be created (parallelism 2)
    assert [o["metadata"]["name"] for o in plan.create] == ["mnist-lr-001"]
    assert ctl.plans(NOW) == []  # nothing changed: nothing decided
    cache.apply("run", "MODIFIED", run_body("mnist-lr-000", 7, phase="Running"))
    assert len(ctl.plans(NOW)) == 1
    fp = fingerprint(exp_body(), cache.trials_of("team-a", "mnist-lr"))
    assert fp != fingerprint(exp_body(2), cache.trials_of("team-a", "mnist-lr"))


def _samples(m: OperatorMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in m.registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_pass_exports_trials_by_state_budget_and_best_objective() -> None:
    """accordion_experiment_* come from the observations the decision used: a created trial is
    Pending until its run really runs; the best objective is the best Succeeded trial's."""
    cache = ExperimentCache()
    cache.apply("experiment", "ADDED", exp_body())
    metrics = OperatorMetrics()
    ctl = ExperimentController(Config(), None, cache, metrics=metrics)  # type: ignore[arg-type]
    trials = {
        "mnist-lr-000": run_body(
            "mnist-lr-000", 2, phase="Succeeded", training={"metrics": {"val_accuracy": 0.91}}
        ),
        "mnist-lr-001": run_body(
            "mnist-lr-001", 3, phase="Succeeded", training={"metrics": {"val_accuracy": 0.97}}
        ),
        "mnist-lr-002": run_body("mnist-lr-002", 4, phase="Failed"),
        "mnist-lr-003": run_body("mnist-lr-003", 5, phase="Running"),
        "mnist-lr-004": run_body("mnist-lr-004", 6, phase="Queued"),
    }
    for body in trials.values():
        cache.apply("run", "ADDED", body)
    ctl.plans(NOW)
    ns_exp = (("experiment", "mnist-lr"), ("namespace", "team-a"))
    states = {
        dict(k)["state"]: v for k, v in _samples(metrics, "accordion_experiment_trials").items()
    }
    assert states == {"Succeeded": 2, "Failed": 1, "Running": 1, "Pending": 1}
    assert _samples(metrics, "accordion_experiment_trials_max") == {ns_exp: 8}
    assert _samples(metrics, "accordion_experiment_best_objective") == {ns_exp: 0.97}
    # the queued trial starts; the search stops the running one (outcome Stopped)
    stopped = run_body("mnist-lr-003", 7, phase="Suspended")
    stopped["metadata"]["annotations"][ANNOTATION_STOPPED] = "Stopped"
    cache.apply("run", "MODIFIED", stopped)
    cache.apply("run", "MODIFIED", run_body("mnist-lr-004", 8, phase="Running"))
    ctl.plans(NOW)
    states = {
        dict(k)["state"]: v for k, v in _samples(metrics, "accordion_experiment_trials").items()
    }
    assert states == {"Succeeded": 2, "Failed": 1, "Running": 1, "Stopped": 1}
    # deleted: every series of the experiment goes
    cache.apply("experiment", "DELETED", exp_body(9))
    ctl.plans(NOW)
    text = generate_latest(metrics.registry).decode()
    assert 'experiment="mnist-lr"' not in text


def test_no_metrics_no_export() -> None:
    cache = ExperimentCache()
    cache.apply("experiment", "ADDED", exp_body())
    ctl = ExperimentController(Config(), None, cache)  # type: ignore[arg-type]
    ctl.plans(NOW)
    assert ctl.exported == set()


def test_deciding_changes_nothing_of_the_controller_the_books_do() -> None:
    """The decisions (run off the event loop) only read their snapshot; what the pass decided
    on, the pruner's rung values and the metrics are kept afterwards, on the loop."""
    cache = ExperimentCache()
    body = exp_body()
    body["spec"]["earlyStopping"] = {"algorithm": "successiveHalving"}
    cache.apply("experiment", "ADDED", body)
    history = [{"epoch": e, "val_accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
    training = {"epoch": 3, "history": history, "metrics": {"val_accuracy": 0.8}}
    cache.apply("run", "ADDED", run_body("mnist-lr-000", 2, phase="Succeeded", training=training))
    cache.apply("run", "ADDED", run_body("mnist-lr-001", 3, phase="Running"))
    metrics = OperatorMetrics()
    ctl = ExperimentController(Config(), None, cache, metrics=metrics)  # type: ignore[arg-type]
    changed = ctl.changed()
    cache.apply("run", "DELETED", run_body("mnist-lr-001", 4))  # a watch event meanwhile
    (decision,) = decide_all([c.observed for c in changed], NOW)
    assert (ctl.seen, ctl.memos, ctl.exported) == ({}, {}, set())
    assert [o["metadata"]["name"] for o in decision.plan.create] == ["mnist-lr-002"]
    assert set(decision.plan.rungs) == {0}  # the finished trial's rung values, replayed
    ctl.record(changed, [decision])
    key = ("team-a", "mnist-lr")
    assert ctl.memos[key] == decision.plan.rungs
    assert ctl.exported == {key}
    # decided on the snapshot: the deletion is a change, decided on the next pass
    assert [c.key for c in ctl.changed()] == [key]
    assert ctl.changed()[0].observed.memo == decision.plan.rungs
