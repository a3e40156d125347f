"""Steps shared by the two Helm e2e tests: tests/e2e/test_helm_install.py (the chart with the
checkout's processes, `make test`) and images/tests/test_helm_images.py (the chart with the images
`make images` built, `make test-images`).

Both start a private cluster whose process nodes run the chart's pods, put the MNIST sample and
the credentials in place, install the chart with the operator pinned to the process nodes, and
then drive TrainingRuns through the apiserver.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from minio.error import S3Error

from accordion_dev.cluster import Cluster, ClusterConfig, bin_dir, free_port_block
from accordion_dev.demo import create_credentials_secret, minio_client, upload_mnist

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "accordion"
RELEASE, SYSTEM = "accordion", "accordion-system"  # the names docs/helm.md uses
TEAM = "team-a"  # where a user trains
BUCKET, SECRET = "accordion", "minio-credentials"
API = "/apis/accordion.dev/v1alpha1"
OPERATOR_PODS = "labelSelector=app.kubernetes.io/component=operator"
Obj = dict[str, Any]


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

    def get(self, path: str) -> Obj:
        with self.c.http() as http:
            r = http.get(path)
            r.raise_for_status()
            body: Obj = r.json()
            return body

    def create(self, plural: str, kind: str, body: Obj) -> None:
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

    def operator_pods(self) -> list[Obj]:
        pods: list[Obj] = self.get(f"/api/v1/namespaces/{SYSTEM}/pods?{OPERATOR_PODS}")["items"]
        return pods

    # ---- the steps -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """The MNIST sample in the bucket, the credentials Secret in the release namespace
        (`helm test` runs its run there) and in the user's."""
        upload_mnist(self.c, BUCKET, "mnist/")
        for ns in (SYSTEM, TEAM):
            create_credentials_secret(self.c, ns, SECRET)

    def install(self, values: Obj, timeout: str) -> None:
        """`helm install --wait` with the operator on the process nodes, its health and metrics
        on ports of the cluster's block (pods on process nodes bind this machine's addresses:
        the chart's 8080 and 9090 may be taken), the trainer's object store the cluster's MinIO,
        and `values` merged over that."""
        c = self.c
        base: Obj = {
            "operator": {
                "nodeSelector": {"accordion.dev/process-node": "true"},
                "healthPort": c.ports.base + 9,
                "metricsPort": c.ports.base + 10,
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
        values_file.write_text(yaml.safe_dump(merged(base, values)))
        out = self.helm(
            "install", RELEASE, str(CHART), "-n", SYSTEM, "-f", str(values_file),
            "--wait", "--timeout", timeout,
        )  # fmt: skip
        assert "STATUS: deployed" in out, out

    def operator_metrics_port(self) -> int:
        return self.c.ports.base + 10


def merged(base: Obj, over: Obj) -> Obj:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextlib.contextmanager
def helm_cluster(tmp_path: Path, first_port: int, **config: Any) -> Iterator[Env]:
    """A private cluster without kwok nodes (every pod must really run: process nodes with one
    GPU each) and its Env. 11 free ports: the cluster's 9, then the operator pod's health and
    metrics ports."""
    cfg = ClusterConfig(
        state_dir=tmp_path / "cluster",
        base_port=free_port_block(first=first_port, size=11),
        kwok_nodes=0,
        process_node_gpus=1,
        **config,
    )
    cluster = Cluster(cfg)
    cluster.up(log=print)
    try:
        yield Env(cluster, tmp_path / "helm")
    finally:
        cluster.down()


def diagnose(env: Env) -> str:
    """What to look at when a test fails: pods, runs, experiments, the operator's log."""
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


class Laps:
    """Wall-clock seconds per phase of a test, printed at the end (and kept as data)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.t = time.monotonic()

    def lap(self, what: str) -> None:
        now = time.monotonic()
        self.timings[what] = round(now - self.t, 1)
        self.t = now


def store(endpoint: str, prefix: str) -> Obj:
    return {
        "endpoint": endpoint,
        "bucket": BUCKET,
        "prefix": prefix,
        "credentialsSecret": {"name": SECRET},
    }


def run_spec(endpoint: str, workers: int, results: str) -> Obj:
    """One epoch of the built-in MLP on the 5,000-image MNIST sample."""
    return {
        "model": {"builtin": "mlp"},
        "epochs": 1,
        "batchSize": 64,
        "data": store(endpoint, "mnist/"),
        "results": store(endpoint, results),
        "workers": {"min": workers, "max": workers, "cpu": "500m", "memory": "2Gi"},
    }


def finished(env: Env, plural: str, name: str) -> Callable[[], Obj | None]:
    def check() -> Obj | None:
        obj = env.get(f"{API}/namespaces/{TEAM}/{plural}/{name}")
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return check


def model_size(env: Env, key: str) -> int:
    try:
        return minio_client(env.c).stat_object(BUCKET, key).size or 0
    except S3Error as e:
        raise AssertionError(f"no model at s3://{BUCKET}/{key}: {e}") from None
