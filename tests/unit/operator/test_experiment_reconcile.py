"""decide_experiment: observed experiment + child runs -> runs to create/stop + status."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from experiment_factory import (
    apply_plan,
    drive,
    finish,
    make_exp,
    observe,
    quality,
    report,
    with_status,
)

from accordion_operator.api.experiment import MAX_STATUS_RUNS
from accordion_operator.core.objects import LABEL_EXPERIMENT
from accordion_operator.experiment.decide import decide_experiment
from accordion_operator.experiment.observe import observe_child
from accordion_operator.experiment.trials import (
    ANNOTATION_PARAMETERS,
    ANNOTATION_SAMPLER,
    ANNOTATION_STOPPED,
    STOP_ENDED,
    STOP_PRUNED,
)

NOW = 1_700_000_000.0


def cond(exp: Any, ctype: str) -> tuple[str, str]:
    c = next(c for c in exp.status.conditions if c.type == ctype)
    return c.status, c.reason


def test_first_pass_creates_parallelism_runs_owned_and_labelled() -> None:
    exp = make_exp(parallelism=3, maxRuns=10, template={"ttlSecondsAfterFinished": 60})
    plan = decide_experiment(exp, [], NOW)
    names = [o["metadata"]["name"] for o in plan.create]
    assert names == ["mnist-lr-000", "mnist-lr-001", "mnist-lr-002"]
    run = plan.create[0]
    meta = run["metadata"]
    assert meta["labels"][LABEL_EXPERIMENT] == "mnist-lr"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "Experiment",
            "name": "mnist-lr",
            "uid": "exp-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    params = json.loads(meta["annotations"][ANNOTATION_PARAMETERS])
    assert meta["annotations"][ANNOTATION_SAMPLER] == "random"
    # the parameter reaches the training code through the hyperparameters, next to the
    # template's own ones
    assert run["spec"]["hyperparameters"] == {"dropout": 0.25, **params}
    assert run["spec"]["model"] == {"builtin": "mnist-cnn"}
    # the trials stay until the experiment goes: the search is rebuilt from them
    assert "ttlSecondsAfterFinished" not in run["spec"]
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Running"


def test_parallelism_caps_active_runs_and_a_finished_run_frees_a_slot() -> None:
    exp = make_exp(parallelism=2, maxRuns=10)
    children: dict[str, dict[str, Any]] = {}
    plan = decide_experiment(exp, [], NOW)
    apply_plan(children, plan)
    assert len(children) == 2
    # nothing finished: no new run, however often we decide
    assert decide_experiment(exp, observe(exp, children), NOW).create == []
    finish(children["mnist-lr-000"], 0.9)
    plan = decide_experiment(exp, observe(exp, children), NOW)
    assert [o["metadata"]["name"] for o in plan.create] == ["mnist-lr-002"]


def test_deciding_again_on_stale_observations_names_the_same_runs() -> None:
    """A pass that did not yet see its own creations asks for the same names (the apiserver
    then answers AlreadyExists): never a duplicate run."""
    exp = make_exp(parallelism=2)
    a = decide_experiment(exp, [], NOW).create
    b = decide_experiment(exp, [], NOW + 5).create
    assert a == b


def test_search_runs_to_max_runs_and_reports_the_best() -> None:
    exp, children = drive(make_exp(maxRuns=8, parallelism=3))
    assert exp.status.phase == "Succeeded"
    assert len(children) == 8
    assert cond(exp, "Succeeded") == ("True", "MaxRunsCompleted")
    assert cond(exp, "Running") == ("False", "SearchEnded")
    best = exp.status.best_run
    assert best is not None
    values = {
        b["metadata"]["name"]: quality(b["spec"]["hyperparameters"]) for b in children.values()
    }
    assert best.name == max(values, key=lambda k: values[k])
    assert best.metric == values[best.name]
    uid = children[best.name]["metadata"]["uid"].replace("-", "")
    assert best.results_uri == f"s3://results/team-a/{best.name}-{uid[:12]}"
    assert exp.status.runs_summary == "8/8"
    assert exp.status.runs_succeeded == 8
    assert [r.trial for r in exp.status.runs] == list(range(8))


def test_minimize_picks_the_lowest() -> None:
    exp, children = drive(
        make_exp(maxRuns=5, objective={"metric": "val_accuracy", "direction": "minimize"})
    )
    values = {
        b["metadata"]["name"]: quality(b["spec"]["hyperparameters"]) for b in children.values()
    }
    assert exp.status.best_run is not None
    assert exp.status.best_run.name == min(values, key=lambda k: values[k])


def test_goal_reached_ends_the_search_and_stops_the_others() -> None:
    exp = make_exp(maxRuns=10, parallelism=3, objective={"metric": "val_accuracy", "goal": 0.9})
    children: dict[str, dict[str, Any]] = {}
    apply_plan(children, decide_experiment(exp, [], NOW))
    finish(children["mnist-lr-001"], 0.95)
    report(children["mnist-lr-000"], [0.5, 0.6])
    plan = decide_experiment(exp, observe(exp, children), NOW)
    assert plan.create == []
    assert sorted(plan.stop) == [("mnist-lr-000", STOP_ENDED), ("mnist-lr-002", STOP_ENDED)]
    exp = with_status(exp, plan.status_patch)
    assert exp.status.phase == "Succeeded"
    assert cond(exp, "GoalReached") == ("True", "GoalReached")
    assert cond(exp, "Succeeded") == ("True", "GoalReached")
    apply_plan(children, plan)
    observed = {c.name: c.outcome for c in observe(exp, children)}
    assert observed == {
        "mnist-lr-000": "Stopped",
        "mnist-lr-001": "Succeeded",
        "mnist-lr-002": "Stopped",
    }


def test_too_many_failures_fail_the_experiment() -> None:
    exp, children = drive(
        make_exp(maxRuns=10, parallelism=2, maxFailedRuns=1), score=lambda p: None
    )
    assert exp.status.phase == "Failed"
    assert cond(exp, "Failed") == ("True", "TooManyFailedRuns")
    assert len(children) == 2  # it stopped creating after the second failure


def test_no_run_with_the_metric_fails_with_a_clear_reason() -> None:
    exp = make_exp(maxRuns=1, parallelism=1, maxFailedRuns=5)
    children: dict[str, dict[str, Any]] = {}
    apply_plan(children, decide_experiment(exp, [], NOW))
    children["mnist-lr-000"]["status"] = {"phase": "Succeeded", "training": {"metrics": {}}}
    plan = decide_experiment(exp, observe(exp, children), NOW)
    exp = with_status(exp, plan.status_patch)
    assert cond(exp, "Failed") == ("True", "NoSuccessfulRuns")
    assert "val_accuracy" in (exp.status.message or "")


def test_grid_smaller_than_max_runs_ends_exhausted() -> None:
    exp, children = drive(
        make_exp(
            algorithm="grid",
            maxRuns=50,
            parallelism=4,
            parameters=[
                {"name": "learning_rate", "type": "categorical", "values": ["0.1", "0.01", "0.001"]}
            ],
        ),
        score=lambda p: {"0.1": 0.5, "0.01": 0.9, "0.001": 0.7}[p["learning_rate"]],
    )
    assert len(children) == 3
    assert cond(exp, "Succeeded") == ("True", "GridExhausted")
    assert exp.status.best_run is not None
    assert exp.status.best_run.parameters == {"learning_rate": "0.01"}


def test_pruned_run_is_stopped_and_marked_and_its_metrics_kept() -> None:
    exp = make_exp(
        maxRuns=10,
        parallelism=2,
        earlyStopping={"algorithm": "median", "startupRuns": 2, "warmupEpochs": 1},
    )
    children: dict[str, dict[str, Any]] = {}
    for _ in range(2):  # two finished runs with good curves
        apply_plan(children, decide_experiment(exp, observe(exp, children), NOW))
        for body in children.values():
            if "status" not in body:
                finish(body, 0.9, curve=[0.7, 0.8, 0.9])
    apply_plan(children, decide_experiment(exp, observe(exp, children), NOW))
    running = [n for n, b in children.items() if "status" not in b]
    assert len(running) == 2
    report(children[running[0]], [0.2, 0.25, 0.3])  # far below the median
    report(children[running[1]], [0.75, 0.85, 0.92])
    plan = decide_experiment(exp, observe(exp, children), NOW)
    assert plan.stop == [(running[0], STOP_PRUNED)]
    assert plan.create == []  # the next trial comes once the pruned run reads as pruned
    apply_plan(children, plan)
    pruned = children[running[0]]
    assert pruned["spec"]["suspend"] is True
    assert pruned["metadata"]["annotations"][ANNOTATION_STOPPED] == "Pruned"
    plan = decide_experiment(exp, observe(exp, children), NOW)
    assert len(plan.create) == 1  # the freed slot is used
    exp = with_status(exp, plan.status_patch)
    row = next(r for r in exp.status.runs if r.name == running[0])
    assert (row.outcome, row.metric) == ("Pruned", 0.3)
    assert exp.status.runs_pruned == 1


def test_finished_experiment_stops_leftover_runs_and_stays_finished() -> None:
    exp, children = drive(make_exp(maxRuns=2, parallelism=2))
    # a run appears active after the end (e.g. the operator died before stopping it)
    body = next(iter(children.values()))
    body["status"] = {"phase": "Running"}
    plan = decide_experiment(exp, observe(exp, children), NOW)
    assert plan.stop == [(body["metadata"]["name"], STOP_ENDED)]
    assert plan.create == []
    assert plan.status_patch is None or plan.status_patch.get("phase", "Succeeded") == "Succeeded"


def test_status_table_is_bounded_and_counts_cover_all_runs() -> None:
    exp, _ = drive(make_exp(maxRuns=130, parallelism=20), passes=100)
    assert exp.status.runs_created == 130
    assert len(exp.status.runs) == MAX_STATUS_RUNS
    assert exp.status.runs[0].trial == 30
    assert exp.status.runs_succeeded == 130


def test_unchanged_observations_give_no_status_write() -> None:
    exp = make_exp()
    plan = decide_experiment(exp, [], NOW)
    exp = with_status(exp, plan.status_patch)
    children: dict[str, dict[str, Any]] = {}
    apply_plan(children, plan)
    plan = decide_experiment(exp, observe(exp, children), NOW + 1)
    exp = with_status(exp, plan.status_patch)
    again = decide_experiment(exp, observe(exp, children), NOW + 2)
    assert again.status_patch is None
    assert again.create == []


def test_deleting_experiment_does_nothing() -> None:
    exp = make_exp()
    body = exp.model_dump(by_alias=True, exclude_none=True)
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    plan = decide_experiment(type(exp).model_validate(body), [], NOW)
    assert (plan.create, plan.stop, plan.status_patch) == ([], [], None)


# --- observe_child -------------------------------------------------------------------------------


def child(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "e-004",
            "namespace": "team-a",
            "uid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
            "labels": {LABEL_EXPERIMENT: "e"},
            "annotations": {"accordion.dev/trial": "4", ANNOTATION_PARAMETERS: '{"lr": 0.1}'},
        },
        "spec": {"results": {"bucket": "r", "prefix": "experiments/"}},
        "status": status,
    }


def test_observe_reads_both_history_shapes_and_the_latest_report() -> None:
    flat = child(
        phase="Running",
        training={
            "epoch": 3,
            "metrics": {"acc": 0.7},
            "history": [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.6}],
        },
    )
    nested = child(
        phase="Running",
        training={
            "history": [
                {"epoch": 1, "metrics": {"acc": 0.5}},
                {"epoch": 2, "metrics": {"acc": 0.6}},
            ],
            "epoch": 3,
            "metrics": {"acc": 0.7},
        },
    )
    for body in (flat, nested):
        c = observe_child(body, "e", "acc")
        assert c is not None
        assert (c.trial, dict(c.params), c.outcome) == (4, {"lr": 0.1}, "Running")
        assert c.intermediate == ((1, 0.5), (2, 0.6), (3, 0.7))


def test_observe_outcomes() -> None:
    def outcome(body: dict[str, Any]) -> str | None:
        c = observe_child(body, "e", "acc")
        return c.outcome if c else None

    ok = child(phase="Succeeded", training={"metrics": {"acc": 0.9}})
    assert outcome(ok) == "Succeeded"
    c = observe_child(ok, "e", "acc")
    assert c is not None
    assert (c.value, c.results_uri) == (0.9, "s3://r/experiments/team-a/e-004-0f1e2d3c4b5a")
    assert outcome(child(phase="Succeeded", training={"metrics": {"loss": 1.0}})) == "Failed"
    assert outcome(child(phase="Failed")) == "Failed"
    stopped = child(phase="Suspended")
    stopped["metadata"]["annotations"][ANNOTATION_STOPPED] = "Pruned"
    assert outcome(stopped) == "Pruned"
    # a run that finished before the stop took effect counts as finished
    ok["metadata"]["annotations"][ANNOTATION_STOPPED] = "Pruned"
    assert outcome(ok) == "Succeeded"
    assert observe_child(child(), "other-experiment", "acc") is None


def test_a_trials_results_location_is_its_own_whatever_its_status_says() -> None:
    """From the trial's namespace, name, uid and spec.results, as the run controller writes
    status.resultsURI and tells the pods (ACCORDION_RESULTS_PATH): neither a URI the trainer
    reported (user code steers it) nor one the launcher patched into status moves it."""
    own = "s3://r/experiments/team-a/e-004-0f1e2d3c4b5a"
    elsewhere = "s3://r/experiments/team-b/e-004-99999999aaaa"
    body = child(
        phase="Succeeded",
        resultsURI=elsewhere,
        training={"metrics": {"acc": 0.9}, "resultsURI": elsewhere},
    )
    c = observe_child(body, "e", "acc")
    assert c is not None
    assert c.results_uri == own
    # a re-created experiment's trial of the same name is another object: another folder
    body["metadata"]["uid"] = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"
    c = observe_child(body, "e", "acc")
    assert c is not None
    assert c.results_uri == "s3://r/experiments/team-a/e-004-7a6b5c4d3e2f"
    # a body without spec.results: no location
    del body["spec"]["results"]
    assert observe_child(body, "e", "acc") == replace(c, results_uri=None)
