"""The Experiment controller in the real operator process (`python -m accordion_operator`)
against the session cluster. The test plays the trainer: it patches the children's
status.training (and phase) the way the launcher and the run controller would."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml
from operator_support import ExpApi, Operator

from accordion_dev import labels
from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import experiment_body, finish_run, results_path
from accordion_operator.api.experiment import Experiment
from accordion_operator.experiment.search import build_study, suggest


def score(run: dict[str, Any]) -> float:
    lr = float(run["spec"]["hyperparameters"]["learning_rate"])
    return round(0.99 - abs(lr - 0.01) * 5, 6)


def succeed(api: ExpApi, run: dict[str, Any], value: float) -> None:
    """The run trains three epochs up to `value` and its launcher exits 0."""
    finish_run(api.http, api.ns, run["metadata"]["name"], [value - 0.2, value - 0.1, value])


def finished(api: ExpApi, name: str, timeout: float = 30) -> None:
    poll(lambda: api.run_status(name).get("phase") == "Succeeded", timeout, what=f"{name} done")


def diagnose(api: ExpApi, name: str, op: Operator) -> str:
    """The experiment's status, its runs' status and the operator's log tail, for a failure."""
    state = {
        "experiment": api.status(name),
        "runs": {k: v.get("status") for k, v in api.runs(name).items()},
    }
    return yaml.safe_dump(state) + "\n--- operator log ---\n" + op.tail()


def secret(api: ExpApi) -> None:
    r = api.http.post(
        f"/api/v1/namespaces/{api.ns}/secrets",
        json={"metadata": {"name": "s3"}, "stringData": {"accessKey": "a", "secretKey": "b"}},
    )
    assert r.status_code == 201, r.text


def test_random_search_survives_a_restart_and_reports_the_best(
    exp_api: ExpApi, operator: Operator, cluster: Cluster
) -> None:
    secret(exp_api)
    body = experiment_body("lr-search", seed=11, maxRuns=4, parallelism=2)
    assert exp_api.create(body).status_code == 201
    runs = poll(
        lambda: len(exp_api.runs("lr-search")) == 2 and exp_api.runs("lr-search"),
        30,
        what="two runs",
    )
    assert sorted(runs) == ["lr-search-000", "lr-search-001"]
    exp = exp_api.get("lr-search")
    for run in runs.values():
        meta = run["metadata"]
        assert meta["ownerReferences"][0]["uid"] == exp["metadata"]["uid"]
        assert meta["labels"]["accordion.dev/experiment"] == "lr-search"
        params = json.loads(meta["annotations"]["accordion.dev/parameters"])
        assert run["spec"]["hyperparameters"] == {"dropout": 0.25, **params}
    time.sleep(3)  # parallelism: no third run while two are active
    assert len(exp_api.runs("lr-search")) == 2

    # a run finishes -> the next one is created; measure how long that takes
    succeed(exp_api, runs["lr-search-000"], score(runs["lr-search-000"]))
    t0 = time.monotonic()
    poll(lambda: "lr-search-002" in exp_api.runs("lr-search"), 20, every=0.05, what="run 002")
    latency = time.monotonic() - t0
    print(f"\nrun finished -> next run created: {latency:.2f} s")
    assert latency < 5

    # kill the operator mid-search, finish a run while it is down, start it again
    operator.kill()
    runs = exp_api.runs("lr-search")
    succeed(exp_api, runs["lr-search-001"], score(runs["lr-search-001"]))
    operator.start()
    try:
        poll(lambda: "lr-search-003" in exp_api.runs("lr-search"), 30, what="run 003 (restart)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(exp_api, 'lr-search', operator)}") from None
    runs = exp_api.runs("lr-search")
    for name in ("lr-search-002", "lr-search-003"):
        succeed(exp_api, runs[name], score(runs[name]))
    try:
        poll(lambda: exp_api.status("lr-search").get("phase") == "Succeeded", 30, what="Succeeded")
    except AssertionError:
        import yaml

        print(
            yaml.safe_dump(
                {
                    "exp": exp_api.status("lr-search"),
                    "runs": {k: v.get("status") for k, v in exp_api.runs("lr-search").items()},
                }
            )
        )
        print(operator.tail())
        raise
    runs = exp_api.runs("lr-search")
    assert sorted(runs) == [f"lr-search-{i:03d}" for i in range(4)], "lost or duplicated runs"
    # the suggestions are the seed's, restart or not
    spec = Experiment.model_validate(exp).spec
    expected = [s.params for s in suggest(build_study(spec, [], "x"), 4)]
    got = [
        json.loads(
            runs[f"lr-search-{i:03d}"]["metadata"]["annotations"]["accordion.dev/parameters"]
        )
        for i in range(4)
    ]
    assert got == expected

    st = exp_api.status("lr-search")
    best = max(runs.values(), key=score)
    assert st["bestRun"]["name"] == best["metadata"]["name"]
    assert st["bestRun"]["metric"] == score(best)
    # the best run's own folder (namespace, name and uid): what its status says, where its pods
    # were told to write, and what the trainer (played by finish_run) reported
    own = f"s3://results/{results_path(best)}"
    assert st["bestRun"]["resultsURI"] == own
    best_status = exp_api.run_status(best["metadata"]["name"])
    assert best_status["resultsURI"] == best_status["training"]["resultsURI"] == own
    assert st["runsSummary"] == "4/4", diagnose(exp_api, "lr-search", operator)
    assert [c["reason"] for c in st["conditions"] if c["status"] == "True"] == ["MaxRunsCompleted"]
    table = cluster.kubectl("get", "exp", "-n", exp_api.ns, "lr-search")
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "BEST", "RUNS", "AGE"]
    assert table.split("\n")[1].split()[1:4] == ["Succeeded", str(score(best)), "4/4"]
    # the documented one-liner prints the best model's location
    uri = cluster.kubectl(
        "get", "exp", "-n", exp_api.ns, "lr-search", "-o", "jsonpath={.status.bestRun.resultsURI}"
    )
    assert uri == st["bestRun"]["resultsURI"]
    assert any(e["reason"] == "MaxRunsCompleted" for e in exp_api.events("lr-search"))

    # deleting the experiment deletes its runs (ownerReferences; the garbage collector)
    cluster.kubectl("delete", "exp", "-n", exp_api.ns, "lr-search", "--wait=false")
    poll(lambda: exp_api.runs("lr-search") == {}, 60, what="runs to be garbage-collected")


def test_median_stopping_prunes_a_bad_run_and_keeps_its_results(
    exp_api: ExpApi, operator: Operator
) -> None:
    secret(exp_api)
    body = experiment_body(
        "pruned",
        seed=11,
        maxRuns=3,
        parallelism=2,
        earlyStopping={"algorithm": "median", "startupRuns": 1, "warmupEpochs": 1},
    )
    assert exp_api.create(body).status_code == 201
    runs = poll(
        lambda: len(exp_api.runs("pruned")) == 2 and exp_api.runs("pruned"), 30, what="two runs"
    )
    succeed(exp_api, runs["pruned-000"], 0.9)  # history 0.7, 0.8, 0.9
    finished(exp_api, "pruned-000")
    # run 001 reports two poor epochs (the launcher writes only status.training)
    training = {
        "epoch": 2,
        "metrics": {"val_accuracy": 0.2},
        "history": [
            {"epoch": 1, "metrics": {"val_accuracy": 0.1}},
            {"epoch": 2, "metrics": {"val_accuracy": 0.2}},
        ],
    }
    exp_api.patch_run_status("pruned-001", {"training": training})
    run = poll(
        lambda: (r := exp_api.runs("pruned").get("pruned-001")) and r["spec"].get("suspend") and r,
        30,
        what="pruned-001 to be stopped",
    )
    assert run["metadata"]["annotations"]["accordion.dev/stopped"] == "Pruned"
    assert run["status"]["training"]["metrics"] == {"val_accuracy": 0.2}  # results kept
    # the freed slot goes to the next trial; the table marks the pruned run
    poll(lambda: "pruned-002" in exp_api.runs("pruned"), 30, what="run 002")
    row = poll(
        lambda: next(
            (
                r
                for r in exp_api.status("pruned").get("runs", [])
                if r["name"] == "pruned-001" and r["outcome"] == "Pruned"
            ),
            None,
        ),
        30,
        what="pruned row",
    )
    assert row["metric"] == 0.2
    assert exp_api.status("pruned")["runsPruned"] == 1
    # the run controller honours suspend: the pruned run's pods go away
    poll(
        lambda: (
            not [
                p
                for p in exp_api.http.get(
                    f"/api/v1/namespaces/{exp_api.ns}/pods",
                    params={"labelSelector": labels.hosts("pruned-001")},
                ).json()["items"]
                if not p["metadata"].get("deletionTimestamp")
            ]
        ),
        30,
        what="pods released",
    )
