"""Issue 8's acceptance, end to end: `helm install` of helm/accordion into a private local
cluster, the operator running as the chart's Deployment (a pod on a process node, under the
chart's ServiceAccount and least-privilege RBAC, reaching the apiserver the in-cluster way),
real training through it, `helm test`, then `helm uninstall` leaving nothing of the operator
behind but the CRDs, which the chart keeps on purpose.

Process nodes ignore images: the Deployment's `command` runs from this checkout. The rest
(Deployment -> ReplicaSet -> Pod, the projected service-account token, RBAC, probes,
ConfigMap-fed settings, watches, garbage collection) is the real Kubernetes machinery.

Watches: the run and the Experiment are created after the operator is Ready, and everything the
operator does for them follows from watch events (its periodic re-LIST is 300 s away): the
controllers' own watches (in-cluster credentials from the service account, reaching the
apiserver at $KUBERNETES_SERVICE_HOST/PORT as client-go does; the local cluster has no cluster
DNS for kubernetes.default.svc) see the run, its pods, the Experiment and its trial run.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from helm_e2e import (
    API,
    BUCKET,
    RELEASE,
    SYSTEM,
    TEAM,
    Env,
    Laps,
    diagnose,
    finished,
    helm_cluster,
    model_size,
    run_spec,
)

from accordion_dev.polling import poll
from accordion_dev.simulated_runs import results_path

CRDS = {
    "customresourcedefinition.apiextensions.k8s.io/trainingruns.accordion.dev",
    "customresourcedefinition.apiextensions.k8s.io/experiments.accordion.dev",
}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # 2 workers of the run, 1 of the Experiment's trial, 1 of `helm test` (each run's first in
    # its launcher's pod)
    with helm_cluster(tmp_path, first_port=24400, process_nodes=4) as e:
        yield e


def logged_at(line: str) -> datetime:
    """The time of an operator log line (`%(asctime)s`: local time, milliseconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_helm_install_trains_then_uninstall_leaves_only_the_crds(env: Env) -> None:
    try:
        install_train_uninstall(env)
    except BaseException:
        print(diagnose(env))
        raise


def install_train_uninstall(env: Env) -> None:
    c = env.c
    laps = Laps()
    env.prepare_data()
    before = {ns: env.objects(ns) for ns in (None, SYSTEM, TEAM)}
    laps.lap("data")

    # ---- install: the operator as the chart's Deployment, on a process node ------------------
    # One replica without leader election here: it acts at once, and its log and metrics are
    # the whole operator's. Two replicas electing a leader on process nodes (each listening on
    # its own pod IP, operator.bindAddress) run in images/tests/test_helm_images.py, and as
    # processes in tests/cluster/test_operator_ha.py.
    # Each run gets a launcher pod of its own here (operator.launcherHostsWorker: false), so
    # real training goes through that mode too; the other real-training tests run the default,
    # the launcher as worker 0.
    operator = {"replicas": 1, "leaderElection": {"enabled": False}, "launcherHostsWorker": False}
    env.install({"operator": operator}, "3m")
    ops = env.operator_pods()
    assert len(ops) == 1, [p["metadata"]["name"] for p in ops]
    for op in ops:
        assert op["spec"]["nodeName"] in c.process_node_names()
        assert op["spec"]["serviceAccountName"] == "accordion-operator"
    ready = datetime.now()  # local time, like the operator's log lines
    laps.lap("helm install")

    # ---- a TrainingRun (2 workers) and an Experiment (1 trial), created after the operator ---
    endpoint = c.minio.endpoint
    run = {"metadata": {"name": "mnist"}, "spec": run_spec(endpoint, 2, "runs/")}
    env.create("trainingruns", "TrainingRun", run)
    experiment = {
        "metadata": {"name": "lr"},
        "spec": {
            "template": run_spec(endpoint, 1, "experiments/"),
            "parameters": [{"name": "learning_rate", "type": "double", "min": 1e-3, "max": 3e-3}],
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "maxRuns": 1,
        },
    }
    env.create("experiments", "Experiment", experiment)
    # `helm test` at the same time: its hook pod (on a process node too) applies a one-worker run
    # in the release namespace and waits for it
    helm_test: list[subprocess.CompletedProcess[str]] = []
    test = ["test", RELEASE, "-n", SYSTEM, "--logs", "--timeout", "4m"]
    tester = threading.Thread(
        target=lambda: helm_test.append(env.run("helm", *test, check=False)), daemon=True
    )
    tester.start()

    run = poll(finished(env, "trainingruns", "mnist"), 300, "the run to finish", every=2)
    st = run["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["training"]["worldSize"] == 2, st["training"]
    # two worker pods trained; the launcher pod, of its own, only ran horovodrun
    assert sorted(st["training"]["worldPods"]) == ["mnist-worker-0", "mnist-worker-1"]
    # the run object's own folder, `runs/team-a/mnist-<uid digits>`: in its status from the
    # operator, reported by the trainer, and where the model is
    folder = results_path(run)
    assert st["resultsURI"] == st["training"]["resultsURI"] == f"s3://{BUCKET}/{folder}"
    assert model_size(env, f"{folder}/model.keras") > 100_000
    exp = poll(finished(env, "experiments", "lr"), 300, "the experiment to finish", every=2)
    est = exp["status"]
    assert est["phase"] == "Succeeded", json.dumps(est, indent=1)
    assert est["runsSummary"] == "1/1", est
    assert est["bestRun"]["name"] == "lr-000", est["bestRun"]
    trial = env.get(f"{API}/namespaces/{TEAM}/trainingruns/lr-000")
    assert est["bestRun"]["resultsURI"] == f"s3://{BUCKET}/{results_path(trial)}"
    assert model_size(env, f"{results_path(trial)}/model.keras") > 100_000
    tester.join(300)
    (r,) = helm_test
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the run succeeded" in r.stdout, r.stdout
    laps.lap("training (run, experiment, helm test)")

    # ---- the chart's least privilege was enough, and nothing failed ------------------------
    log = "\n".join(env.kubectl("logs", "-n", SYSTEM, op["metadata"]["name"]) for op in ops)
    (c.state_dir / "operator.log").write_text(log)
    # "forbidden", not "403": every refusal's message says it (kopf's APIForbiddenError, the
    # apiserver's "... is forbidden: User ..."), while "403" is also a log timestamp's millis
    denied = [x for x in log.splitlines() if "forbidden" in x.lower()]
    assert denied == [], "\n".join(denied)
    scrapes = [
        httpx.get(
            f"http://{op['status']['podIP']}:{env.operator_metrics_port()}/metrics", timeout=10
        ).text
        for op in ops
    ]
    # alone, it acts at once and says so
    leading = [
        float(line.split()[-1])
        for s in scrapes
        for line in s.splitlines()
        if line.startswith("accordion_operator_leader ")
    ]
    assert leading == [1.0], leading
    scrape = "\n".join(scrapes)
    assert "accordion_operator_build_info" in scrape
    # the operator counts every refused request by code, logged or not
    refused = [
        x
        for x in scrape.splitlines()
        if x.startswith("accordion_apiserver_request_errors_total")
        and ('code="403"' in x or 'code="401"' in x)
    ]
    assert refused == [], refused
    # serving the run, the experiment and the helm test's run logged no error
    errors = [x for x in log.splitlines() if " ERROR " in x and logged_at(x) >= ready]
    assert errors == [], log

    # the finished runs' workers are deleted; each keeps its launcher pod (its logs) until the
    # run is deleted
    def pods() -> list[tuple[str, str]]:
        items = env.get(f"/api/v1/namespaces/{TEAM}/pods")["items"]
        return sorted((p["metadata"]["name"], p["status"]["phase"]) for p in items)

    launchers = [("lr-000-launcher", "Succeeded"), ("mnist-launcher", "Succeeded")]
    poll(lambda: pods() == launchers, 60, f"only the launchers to remain: {pods()}")

    # ---- uninstall: nothing of the operator remains but the kept CRDs -----------------------
    out = env.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "2m")
    assert "These resources were kept due to the resource policy" in out, out
    # the operator pod ends with its grace period, its EndpointSlices go with the Service
    poll(
        lambda: env.objects(SYSTEM) == before[SYSTEM],
        60,
        f"the release namespace to be clean (left: {env.objects(SYSTEM) - before[SYSTEM]})",
    )
    after = env.objects()
    assert after - before[None] == CRDS | {
        "apiservice.apiregistration.k8s.io/v1alpha1.accordion.dev"
    }
    assert before[None] - after == set()
    assert env.run("helm", "status", RELEASE, "-n", SYSTEM, check=False).returncode != 0
    laps.lap("helm uninstall")

    # The runs are the users' (kept with the CRDs). Deleting them without an operator removes
    # their pods, SSH Secret, ServiceAccount and RBAC (ownerReferences; no finalizer waits for
    # an operator that is gone).
    env.kubectl("delete", "experiments,trainingruns", "--all", "-n", TEAM, "--timeout", "60s")
    poll(lambda: env.objects(TEAM) == before[TEAM], 60, "the run's objects to be collected")
    laps.lap("runs deleted")
    print(f"timings (s): {laps.timings}")
