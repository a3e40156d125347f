"""The Experiment controller's cache and its pure pass (`plans`): no cluster, no I/O."""

from __future__ import annotations

import copy
from typing import Any

from experiment_factory import BASE

from accordion_operator.config import Config
from accordion_operator.experiment_controller import (
    ExperimentCache,
    ExperimentController,
    fingerprint,
)
from accordion_operator.experiment_reconcile import LABEL_EXPERIMENT

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
