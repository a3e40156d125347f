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
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from minio.error import S3Error

from accordion_dev.cluster import Cluster, ClusterConfig, bin_dir, free_port_block
from accordion_dev.demo import create_credentials_secret, minio_client, upload_mnist
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import results_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "accordion"
RELEASE, SYSTEM = "accordion", "accordion-system"  # the names docs/helm.md uses
TEAM = "team-a"  # where a user trains
BUCKET, SECRET = "accordion", "minio-credentials"
CRDS = {
    "customresourcedefinition.apiextensions.k8s.io/trainingruns.accordion.dev",
    "customresourcedefinition.apiextensions.k8s.io/experiments.accordion.dev",
}
API = "/apis/accordion.dev/v1alpha1"


class Env:
    """The private cluster, with helm and kubectl pointed at it."""

    def __init__(self, cluster: Cluster, helm_home: Path) -> None:
        self.c = cluster
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [str(bin_dir() / tool), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
            check=False,
        )
        if check:
            assert r.returncode == 0, f"{tool} {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r

    def helm(self, *args: str, check: bool = True) -> str:
        r = self.run("helm", *args, check=check)
        return r.stdout + r.stderr

    def kubectl(self, *args: str) -> str:
        return self.run("kubectl", *args).stdout

    def get(self, path: str) -> dict[str, Any]:
        with self.c.http() as http:
            r = http.get(path)
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body

    def create(self, plural: str, kind: str, body: dict[str, Any]) -> None:
        body = {"apiVersion": "accordion.dev/v1alpha1", "kind": kind, **body}
        with self.c.http() as http:
            r = http.post(f"{API}/namespaces/{TEAM}/{plural}", json=body)
            assert r.status_code == 201, r.text

    def objects(self, namespace: str | None = None) -> set[str]:
        """Every object (kind/name) in `namespace`, or every cluster-scoped one; not Events."""
        scope = f"--namespaced={'true' if namespace else 'false'}"
        kinds = self.kubectl("api-resources", "--verbs=list", scope, "-o", "name").split()
        kinds = [k for k in kinds if k.split(".")[0] != "events"]
        where = ["-n", namespace] if namespace else []
        return set(self.kubectl("get", ",".join(kinds), *where, "-o", "name").split())


def diagnose(env: Env) -> str:
    """What to look at when the test fails: pods, runs, experiments, the operator's log."""
    out = [env.run("kubectl", "get", "pods", "-A", "-o", "wide", check=False).stdout]
    for what in ("trainingruns", "experiments"):
        got = env.run("kubectl", "get", what, "-A", "-o", "yaml", check=False)
        out.append(got.stdout[-6000:] + got.stderr)
    log = env.run(
        "kubectl",
        "logs",
        "-n",
        SYSTEM,
        "-l",
        "app.kubernetes.io/component=operator",
        "--prefix",
        check=False,
    )
    out.append("operator log:\n" + (log.stdout + log.stderr)[-6000:])
    return "\n".join(out)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # 11 free ports: the cluster's 9, then the operator pod's health and metrics ports (pods on
    # process nodes bind this machine's ports: the chart's 8080 and 9090 may be taken).
    base = free_port_block(first=24400, size=11)
    cfg = ClusterConfig(
        state_dir=tmp_path / "cluster",
        base_port=base,
        kwok_nodes=0,
        process_nodes=4,  # 2 workers of the run, 1 of the Experiment's trial, 1 of `helm test`
        process_node_gpus=1,
    )
    cluster = Cluster(cfg)
    cluster.up(log=print)
    try:
        yield Env(cluster, tmp_path / "helm")
    finally:
        cluster.down()


def store(endpoint: str, prefix: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "bucket": BUCKET,
        "prefix": prefix,
        "credentialsSecret": {"name": SECRET},
    }


def run_spec(endpoint: str, workers: int, results: str) -> dict[str, Any]:
    """One epoch of the built-in MLP on the 5,000-image MNIST sample."""
    return {
        "model": {"builtin": "mlp"},
        "epochs": 1,
        "batchSize": 64,
        "data": store(endpoint, "mnist/"),
        "results": store(endpoint, results),
        "workers": {"min": workers, "max": workers, "cpu": "500m", "memory": "2Gi"},
    }


def finished(env: Env, plural: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        obj = env.get(f"{API}/namespaces/{TEAM}/{plural}/{name}")
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return check


def logged_at(line: str) -> datetime:
    """The time of an operator log line (`%(asctime)s`: local time, milliseconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def model_size(env: Env, key: str) -> int:
    try:
        return minio_client(env.c).stat_object(BUCKET, key).size or 0
    except S3Error as e:
        raise AssertionError(f"no model at s3://{BUCKET}/{key}: {e}") from None


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
    t = time.monotonic()
    timings: dict[str, float] = {}

    def lap(what: str) -> None:
        nonlocal t
        timings[what] = round(time.monotonic() - t, 1)
        t = time.monotonic()

    upload_mnist(c, BUCKET, "mnist/")
    for ns in (SYSTEM, TEAM):  # `helm test` runs its run in the release namespace
        create_credentials_secret(c, ns, SECRET)
    before = {ns: env.objects(ns) for ns in (None, SYSTEM, TEAM)}
    lap("data")

    # ---- install: the operator as the chart's Deployment, on a process node ------------------
    health, metrics = c.ports.base + 9, c.ports.base + 10
    values = {
        "operator": {
            # One replica without leader election here: pods on process nodes share this
            # machine's network and the operator listens on all addresses (0.0.0.0), so a
            # second replica on the same ports could not serve its own /metrics and /healthz;
            # and a leader renewing its Lease while `helm uninstall` deletes it can leave one
            # behind (see docs/helm.md, High availability). Two replicas electing a leader are
            # tested as processes (tests/cluster/test_operator_ha.py).
            "replicas": 1,
            "leaderElection": {"enabled": False},
            "nodeSelector": {"accordion.dev/process-node": "true"},
            "healthPort": health,
            "metricsPort": metrics,
        },
        "trainer": {
            "objectStore": {
                "endpoint": c.minio.endpoint,
                "bucket": BUCKET,
                "credentialsSecret": SECRET,
            }
        },
    }
    values_file = c.state_dir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    install = ["install", RELEASE, str(CHART), "-n", SYSTEM, "-f", str(values_file)]
    out = env.helm(*install, "--wait", "--timeout", "3m")
    assert "STATUS: deployed" in out, out
    selector = "labelSelector=app.kubernetes.io/component=operator"
    ops = env.get(f"/api/v1/namespaces/{SYSTEM}/pods?{selector}")["items"]
    assert len(ops) == 1, [p["metadata"]["name"] for p in ops]
    for op in ops:
        assert op["spec"]["nodeName"] in c.process_node_names()
        assert op["spec"]["serviceAccountName"] == "accordion-operator"
    ready = datetime.now()  # local time, like the operator's log lines
    lap("helm install")

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
    lap("training (run, experiment, helm test)")

    # ---- the chart's least privilege was enough, and nothing failed ------------------------
    log = "\n".join(env.kubectl("logs", "-n", SYSTEM, op["metadata"]["name"]) for op in ops)
    (c.state_dir / "operator.log").write_text(log)
    # "forbidden", not "403": every refusal's message says it (kopf's APIForbiddenError, the
    # apiserver's "... is forbidden: User ..."), while "403" is also a log timestamp's millis
    denied = [x for x in log.splitlines() if "forbidden" in x.lower()]
    assert denied == [], "\n".join(denied)
    scrapes = [
        httpx.get(f"http://{op['status']['podIP']}:{metrics}/metrics", timeout=10).text
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
    lap("helm uninstall")

    # The runs are the users' (kept with the CRDs). Deleting them without an operator removes
    # their pods, SSH Secret, ServiceAccount and RBAC (ownerReferences; no finalizer waits for
    # an operator that is gone).
    env.kubectl("delete", "experiments,trainingruns", "--all", "-n", TEAM, "--timeout", "60s")
    poll(lambda: env.objects(TEAM) == before[TEAM], 60, "the run's objects to be collected")
    lap("runs deleted")
    print(f"timings (s): {timings}")
