"""The local cluster: a real Kubernetes control plane, simulated GPU nodes, MinIO and Prometheus.

Everything runs as local processes on 127.0.0.1 from binaries built by `e2e/build.sh` from pinned
Go modules: etcd, kube-apiserver, kube-scheduler and kube-controller-manager of one Kubernetes
release, kwok for simulated nodes (scheduling and scale tests, where pods need not run), MinIO,
and Debian's Prometheus. Pods that must really run get process nodes (`accordion_dev.nodeagent`).

State (certificates, kubeconfigs, data, logs) lives in one directory, `.accordion/cluster` of the
checkout by default. All ports derive from one base port so a test cluster can run beside a
developer's cluster in another state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import yaml

from accordion_dev import kueue, pki
from accordion_dev.procs import Proc, ProcTable

REPO = Path(__file__).resolve().parents[2]
GPU = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}
#: kwok's own convention: simulated nodes carry this taint so that pods meant to really run
#: (on process nodes) never land on a node where nothing would run them.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
#: a pod with this label stays Running on a kwok node even when a Job owns it (kwok's fast
#: stages complete a Job's pods at once): long-running Jobs, as training jobs are, for the
#: Kueue test and the peer benchmark
KWOK_KEEP_RUNNING = "accordion.dev/kwok-keep-running"


def free_port_block(first: int = 26400, size: int = 9) -> int:
    """A base port whose next `size` ports are free now (for a private test/demo cluster).
    Stays below Linux's ephemeral range (32768+), where any outgoing connection may take a
    port between this check and the component's bind."""
    import socket

    for base in range(first, 32768 - size, 17):
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports for a local cluster")


class ClusterError(RuntimeError):
    """A failure with a message that says what to do next."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accordion"
    return Path(os.environ.get("ACCORDION_CACHE", default))


def bin_dir() -> Path:
    return cache_dir() / "bin"


def ensure_binaries(*extra: str) -> Path:
    """Build (or find cached) binaries; the build prints its own progress. `extra`: optional
    components of e2e/build.sh (`registry`)."""
    build = [str(REPO / "e2e/build.sh"), *extra]
    if subprocess.run([*build, "--check"], check=False).returncode != 0:
        print("[cluster] building binaries from pinned Go modules (cached after the first time)")
    out = subprocess.run(build, check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Ports:
    base: int

    etcd = property(lambda self: self.base)
    etcd_peer = property(lambda self: self.base + 1)
    apiserver = property(lambda self: self.base + 2)
    scheduler = property(lambda self: self.base + 3)
    controller_manager = property(lambda self: self.base + 4)
    kwok = property(lambda self: self.base + 5)
    minio = property(lambda self: self.base + 6)
    minio_console = property(lambda self: self.base + 7)
    prometheus = property(lambda self: self.base + 8)


@dataclass
class ClusterConfig:
    state_dir: Path = field(default_factory=lambda: REPO / ".accordion" / "cluster")
    base_port: int = 16400
    #: simulated (kwok) GPU nodes: scheduling happens, nothing runs
    kwok_nodes: int = 4
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_taint: bool = True
    #: process nodes: pods really run as local processes (accordion_dev.nodeagent)
    process_nodes: int = 0
    process_node_gpus: int = 1
    #: host CPUs per process node (`taskset -c` lists; node i gets entry i mod n): nodes with
    #: cores of their own, for benchmarks that time a pod's start beside other nodes' training.
    #: Empty: every node shares every core.
    process_node_cpus: tuple[str, ...] = ()
    #: how quickly the node controller notices a lost node (real default: 50 s)
    node_monitor_grace_seconds: int = 20
    #: Prometheus and its pod discovery. Off for control-plane benchmarks: it would try to
    #: scrape every simulated pod that declares a metrics port (kwok pod IPs lead nowhere).
    monitoring: bool = True
    #: serve Go's pprof on the apiserver (/debug/pprof, admin only): benchmarks profile it
    apiserver_profiling: bool = False
    #: serve the local image registry (`make images` pushes there; accordion_dev.registry) on a
    #: free port, and let process nodes run the images it holds (pods naming
    #: `<registry address>/<repository>@<digest>`). Off by default: the tests' pods run from the
    #: checkout, and the registry binary is built only when asked for.
    registry: bool = False
    #: run Kueue (sigs.k8s.io/kueue, pinned in e2e/build.sh) as a local process: its CRDs,
    #: webhooks and manager (accordion_dev.kueue), managing batch/v1 Jobs labelled with a
    #: queue name
    kueue: bool = False
    #: Kueue's client rate limits; the defaults are those of its shipped configuration
    kueue_qps: float = 50.0
    kueue_burst: int = 100
    #: Kueue feature gates (its Configuration's featureGates), e.g.
    #: {"ElasticJobsViaWorkloadSlices": True}
    kueue_feature_gates: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class MinioInfo:
    endpoint: str  # host:port, plain HTTP on loopback
    access_key: str
    secret_key: str

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"


class Cluster:
    """Handle on a local cluster's state directory; `up()` starts it, `down()` stops it."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        self.state_dir = self.config.state_dir.resolve()
        self.ports = Ports(self.config.base_port)
        self.procs = ProcTable(self.state_dir)
        self.pki = self.state_dir / "pki"

    # ---- paths and clients -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def minio(self) -> MinioInfo:
        env = json.loads((self.state_dir / "minio-credentials.json").read_text())
        return MinioInfo(f"127.0.0.1:{self.ports.minio}", env["accessKey"], env["secretKey"])

    def http(self, timeout: float | None = 30.0) -> httpx.Client:
        """An admin client of the apiserver (system:masters)."""
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return httpx.Client(base_url=self.server, verify=ctx, timeout=timeout)

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and, at once, its pods: the namespace controller takes ~5 s to
        get to them even when the namespace is nearly empty, and kwok pods would then still go
        through their grace period (a process node's agent kills a vanished pod's processes).
        None can come back: a terminating namespace refuses new pods."""
        with self.http() as http:
            http.delete(f"/api/v1/namespaces/{name}")
            http.request(
                "DELETE",
                f"/api/v1/namespaces/{name}/pods",
                json={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
            )

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        out = subprocess.run(
            [str(bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=False,
            capture_output=True,
            text=True,
            input=input,
        )
        if check and out.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    # ---- lifecycle ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / ".lock").open("w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClusterError(
                    f"another `cluster up/down` is working on {self.state_dir}; wait for it"
                ) from None
            yield

    def running(self) -> list[Proc]:
        return [p for p in self.procs.load() if p.alive()]

    def up(self, log: Callable[[str], None] = print) -> None:
        with self._lock():
            if self.running():
                raise ClusterError(
                    f"a local cluster is already running from {self.state_dir} "
                    f"(apiserver {self.server}). Use it (KUBECONFIG={self.kubeconfig}), "
                    "or stop it first with `accordion-dev cluster down` (make cluster-down)."
                )
            self.procs.stop_all(timeout=2)  # leftovers of a crashed run, if any
            started = time.monotonic()
            bins = ensure_binaries(*(["registry"] if self.config.registry else []))
            try:
                self._up(bins, log)
            except BaseException:
                log(
                    f"[cluster] start failed; stopping what was started. Logs: {self.procs.log_dir}"
                )
                self.procs.stop_all()
                raise
            log(f"[cluster] up in {time.monotonic() - started:.1f} s")

    def _step(self, log: Callable[[str], None], what: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        log(f"[cluster] {what:<44} {time.monotonic() - t:5.1f} s")

    def _up(self, bins: Path, log: Callable[[str], None]) -> None:
        if not (self.pki / "sa.key").exists():
            self._step(log, "certificates and keys", lambda: pki.generate(self.pki))
        self._write_kubeconfigs()
        self._step(log, "etcd", lambda: self._start_etcd(bins))
        self._step(log, "kube-apiserver", lambda: self._start_apiserver(bins))
        self._step(log, "kube-controller-manager + kube-scheduler", lambda: self._start_ctrl(bins))
        self._step(log, "MinIO", lambda: self._start_minio(bins))
        if self.config.registry:
            self._step(log, "image registry", lambda: self._start_registry(bins))
        if self.config.monitoring:
            self._step(log, "Prometheus", self._start_prometheus)
        if self.config.kueue:
            self.start_kueue(log)
        else:  # a state directory that had Kueue: its webhooks would refuse every Job
            kueue.remove_webhooks(self)
        # kwok always runs (cheap), so simulated nodes can be added later (benchmarks, tests).
        self._step(
            log,
            f"kwok + {self.config.kwok_nodes} simulated GPU nodes",
            lambda: self._start_kwok(bins),
        )
        if self.config.process_nodes:
            self._step(log, f"{self.config.process_nodes} process nodes", self._start_process_nodes)

    def down(self, purge: bool = False) -> list[str]:
        with self._lock():
            names = self.procs.stop_all()
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return names

    # ---- components ---------------------------------------------------------------------
    def _wait(self, what: str, check: Callable[[], bool], proc: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                tail = Path(proc.log).read_text(errors="replace").splitlines()[-15:]
                raise ClusterError(
                    f"{what} exited during start; last log lines ({proc.log}):\n" + "\n".join(tail)
                )
            with contextlib.suppress(httpx.HTTPError, OSError):
                if check():
                    return
            time.sleep(0.1)
        raise ClusterError(f"{what} not healthy after {timeout:.0f} s; see {proc.log}")

    def _get_ok(self, url: str, **kw: Any) -> bool:
        return httpx.get(url, timeout=2, **kw).status_code == 200

    def _start_etcd(self, bins: Path) -> None:
        p = self.procs.start(
            "etcd",
            [
                str(bins / "etcd"),
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.ports.etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{self.ports.etcd_peer}",
                # A throwaway test cluster: durability is not worth the latency.
                "--unsafe-no-fsync",
            ],
        )
        self._wait("etcd", lambda: self._get_ok(f"http://127.0.0.1:{self.ports.etcd}/health"), p)

    def _start_apiserver(self, bins: Path) -> None:
        k = self.pki
        p = self.procs.start(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--tls-cert-file={k / 'apiserver.crt'}",
                f"--tls-private-key-file={k / 'apiserver.key'}",
                f"--client-ca-file={k / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={k / 'sa.pub'}",
                f"--service-account-signing-key-file={k / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                # The `kubernetes` Service cannot point at a loopback address; nothing here uses it.
                "--endpoint-reconciler-type=none",
                "--max-requests-inflight=1000",
                "--max-mutating-requests-inflight=500",
                f"--profiling={str(self.config.apiserver_profiling).lower()}",
            ],
        )
        ok = lambda: self.http(timeout=2).get("/readyz").status_code == 200  # noqa: E731
        self._wait("kube-apiserver", ok, p, timeout=90)

    def _start_ctrl(self, bins: Path) -> None:
        k = self.pki
        kcm = self.procs.start(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.controller_manager}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={k / 'sa.key'}",
                f"--root-ca-file={k / 'ca.crt'}",
                f"--cluster-signing-cert-file={k / 'ca.crt'}",
                f"--cluster-signing-key-file={k / 'ca.key'}",
                f"--node-monitor-grace-period={self.config.node_monitor_grace_seconds}s",
                "--node-monitor-period=2s",
                "--kube-api-qps=300",
                "--kube-api-burst=600",
                "--concurrent-gc-syncs=50",
            ],
        )
        sched_cfg = self.state_dir / "scheduler.yaml"
        sched_cfg.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self.state_dir / "scheduler.kubeconfig"),
                        "qps": 300,
                        "burst": 600,
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        sched = self.procs.start(
            "kube-scheduler",
            [
                str(bins / "kube-scheduler"),
                f"--config={sched_cfg}",
                f"--authentication-kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.scheduler}",
            ],
        )
        for proc, port in ((kcm, self.ports.controller_manager), (sched, self.ports.scheduler)):
            url = f"https://127.0.0.1:{port}/healthz"
            self._wait(proc.name, functools.partial(self._get_ok, url, verify=False), proc)
        # The controller-manager creates `default` service accounts; pods need one.
        self._wait(
            "default service account",
            lambda: (
                self.http().get("/api/v1/namespaces/default/serviceaccounts/default").status_code
                == 200
            ),
            kcm,
        )

    def _start_minio(self, bins: Path) -> None:
        cred_file = self.state_dir / "minio-credentials.json"
        if not cred_file.exists():
            cred_file.write_text(
                json.dumps(
                    {
                        "accessKey": f"accordion-{secrets.token_hex(4)}",
                        "secretKey": secrets.token_urlsafe(24),
                    }
                )
            )
            cred_file.chmod(0o600)
        creds = json.loads(cred_file.read_text())
        p = self.procs.start(
            "minio",
            [
                str(bins / "minio"),
                "server",
                str(self.state_dir / "minio-data"),
                "--address",
                f"127.0.0.1:{self.ports.minio}",
                "--console-address",
                f"127.0.0.1:{self.ports.minio_console}",
                "--quiet",
            ],
            env={
                "MINIO_ROOT_USER": creds["accessKey"],
                "MINIO_ROOT_PASSWORD": creds["secretKey"],
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                # Let Prometheus scrape MinIO without a bearer token.
                "MINIO_PROMETHEUS_AUTH_TYPE": "public",
            },
        )
        url = f"http://127.0.0.1:{self.ports.minio}/minio/health/live"
        self._wait("minio", lambda: self._get_ok(url), p)

    @property
    def registry(self) -> str | None:
        """host:port of this cluster's image registry (plain HTTP), or None without one."""
        path = self.state_dir / "registry.json"
        if not self.config.registry or not path.exists():
            return None
        return str(json.loads(path.read_text())["address"])

    def _start_registry(self, bins: Path) -> None:
        from accordion_dev import registry

        address = f"127.0.0.1:{registry.free_port()}"
        root = registry.storage_root()
        root.mkdir(parents=True, exist_ok=True)
        cfg = self.state_dir / "registry.yml"
        cfg.write_text(json.dumps(registry.config(root, address), indent=1))
        p = self.procs.start("registry", [str(bins / "registry"), "serve", str(cfg)])
        (self.state_dir / "registry.json").write_text(json.dumps({"address": address}))
        self._wait("registry", lambda: self._get_ok(f"http://{address}/v2/"), p)

    @property
    def prometheus_targets_dir(self) -> Path:
        return self.state_dir / "prometheus" / "targets"

    @property
    def prometheus_rules_dir(self) -> Path:
        return self.state_dir / "prometheus" / "rules"

    def _start_prometheus(self) -> None:
        prom = shutil.which("prometheus")
        if prom is None:
            raise ClusterError(
                "prometheus not found: run `make deps` (installs Debian's prometheus package)"
            )
        self.prometheus_targets_dir.mkdir(parents=True, exist_ok=True)
        self.prometheus_rules_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.state_dir / "prometheus" / "prometheus.yml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                    "rule_files": [str(self.prometheus_rules_dir / "*.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "prometheus",
                            "static_configs": [{"targets": [f"127.0.0.1:{self.ports.prometheus}"]}],
                        },
                        {
                            "job_name": "minio",
                            "metrics_path": "/minio/v2/metrics/cluster",
                            "static_configs": [{"targets": [f"127.0.0.1:{self.ports.minio}"]}],
                        },
                        # Tests and the demo add targets by writing files here (add_scrape_target).
                        {
                            "job_name": "accordion",
                            "file_sd_configs": [
                                {
                                    "files": [str(self.prometheus_targets_dir / "*.json")],
                                    "refresh_interval": "1s",
                                }
                            ],
                        },
                    ],
                }
            )
        )
        p = self.procs.start(
            "prometheus",
            [
                prom,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.state_dir / 'prometheus' / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2d",
            ],
        )
        self._wait("prometheus", lambda: self._get_ok(f"{self.prometheus_url}/-/ready"), p)
        # Debian's Prometheus is built without Kubernetes service discovery; a small process
        # does its job for pods (see accordion_dev.pod_discovery).
        self.procs.start(
            "pod-discovery",
            [
                sys.executable,
                "-m",
                "accordion_dev.pod_discovery",
                "--state-dir",
                str(self.state_dir),
                "--base-port",
                str(self.ports.base),
            ],
        )

    def add_scrape_target(
        self,
        name: str,
        address: str,
        labels: dict[str, str] | None = None,
        metrics_path: str = "/metrics",
    ) -> None:
        """Tell Prometheus to scrape `address` (host:port); picked up within ~1 s."""
        self.prometheus_targets_dir.mkdir(parents=True, exist_ok=True)
        group = {
            "targets": [address],
            "labels": {"__metrics_path__": metrics_path, **(labels or {})},
        }
        tmp = self.prometheus_targets_dir / f".{name}.tmp"
        tmp.write_text(json.dumps([group]))
        tmp.replace(self.prometheus_targets_dir / f"{name}.json")

    def remove_scrape_target(self, name: str) -> None:
        (self.prometheus_targets_dir / f"{name}.json").unlink(missing_ok=True)

    def _start_kwok(self, bins: Path) -> None:
        stages = sorted((bins / "kwok-stages").glob("*.yaml"))
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokConfiguration",
                "options": {
                    "manageAllNodes": False,
                    "manageNodesWithAnnotationSelector": "kwok.x-k8s.io/node=fake",
                    "nodeLeaseDurationSeconds": 40,
                    # The binary's zero defaults disable these loops; kwokctl's values:
                    "nodeLeaseParallelism": 16,
                    "podPlayStageParallelism": 16,
                    "nodePlayStageParallelism": 16,
                    "podsOnNodeSyncParallelism": 16,
                    "serverAddress": f"127.0.0.1:{self.ports.kwok}",
                    "cidr": "10.244.0.0/16",
                    "nodeIP": "10.240.0.1",
                },
            }
        ]
        docs += [_stage(yaml.safe_load(s.read_text())) for s in stages]
        cfg = self.state_dir / "kwok.yaml"
        cfg.write_text(yaml.safe_dump_all(docs))
        p = self.procs.start(
            "kwok",
            [
                str(bins / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={cfg}",
            ],
        )
        self._wait("kwok", lambda: self._get_ok(f"http://127.0.0.1:{self.ports.kwok}/healthz"), p)
        add_kwok_nodes(
            self,
            self.config.kwok_nodes,
            gpus=self.config.gpus_per_node,
            product=self.config.gpu_product,
            gpu_taint=self.config.gpu_taint,
        )
        wait_nodes_ready(self, self.config.kwok_nodes, selector="type=kwok")

    def start_kueue(self, log: Callable[[str], None] = print) -> None:
        """Start Kueue (accordion_dev.kueue) on this cluster, as `up` does with
        `ClusterConfig.kueue`. If it runs already with the configuration this cluster's
        `ClusterConfig` asks for (feature gates, rate limits), nothing; with another, restarted
        with this one (tests that need a feature gate set it in `config.kueue_feature_gates`)."""
        if any(p.name == "kueue" for p in self.running()):
            if kueue.running_as_configured(self):
                return
            self.procs.stop("kueue")
        self.config.kueue = True
        self._step(log, "Kueue (CRDs, webhooks, manager)", lambda: kueue.start(self, bin_dir()))

    def _start_process_nodes(self) -> None:
        self.add_process_nodes(self.config.process_nodes)

    def process_node_names(self) -> list[str]:
        return [
            p.name.removeprefix("node-") for p in self.procs.load() if p.name.startswith("node-")
        ]

    def add_process_nodes(self, count: int) -> list[str]:
        """Start `count` more process nodes (their agents); wait until they are Ready."""
        from accordion_dev import nodeagent  # only when asked for: it is its own component

        first = len(self.process_node_names())
        names = []
        for i in range(first, first + count):
            name = f"proc-{i}"
            popen = nodeagent.start_agent(
                kubeconfig=self.kubeconfig,
                name=name,
                gpus=self.config.process_node_gpus,
                state_dir=self.state_dir / "nodes" / name,
                index=i,
                gpu_product=self.config.gpu_product,
                log_file=self.procs.log_dir / f"node-{name}.log",
                image_registries=[self.registry] if self.registry else None,
                host_cpus=cpus[i % len(cpus)] if (cpus := self.config.process_node_cpus) else None,
            )
            self.procs.add(
                Proc(
                    f"node-{name}",
                    popen.pid,
                    [str(a) for a in cast(list[Any], popen.args)],
                    str(self.procs.log_dir / f"node-{name}.log"),
                )
            )
            names.append(name)
        wait_nodes_ready(self, first + count, selector="accordion.dev/process-node=true")
        return names

    def _write_kubeconfigs(self) -> None:
        files = {
            "kubeconfig": "admin",
            "scheduler.kubeconfig": "scheduler",
            "controller-manager.kubeconfig": "controller-manager",
        }
        for fname, ident in files.items():
            cfg = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "accordion-local",
                        "cluster": {
                            "server": self.server,
                            "certificate-authority": str(self.pki / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": ident,
                        "user": {
                            "client-certificate": str(self.pki / f"{ident}.crt"),
                            "client-key": str(self.pki / f"{ident}.key"),
                        },
                    }
                ],
                "contexts": [
                    {
                        "name": "accordion-local",
                        "context": {"cluster": "accordion-local", "user": ident},
                    }
                ],
                "current-context": "accordion-local",
            }
            path = self.state_dir / fname
            path.write_text(yaml.safe_dump(cfg))
            path.chmod(0o600)

    # ---- status -------------------------------------------------------------------------
    def status(self) -> list[tuple[str, str, str]]:
        """(component, state, detail) for each recorded process; state is ok/DOWN/UNHEALTHY."""
        health = {
            "etcd": f"http://127.0.0.1:{self.ports.etcd}/health",
            "minio": f"http://127.0.0.1:{self.ports.minio}/minio/health/live",
            "prometheus": f"{self.prometheus_url}/-/ready",
            "kwok": f"http://127.0.0.1:{self.ports.kwok}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{self.ports.scheduler}/healthz",
            "kube-controller-manager": f"https://127.0.0.1:{self.ports.controller_manager}/healthz",
        }
        if self.registry:
            health["registry"] = f"http://{self.registry}/v2/"
        if (kueue_ready := kueue.health_url(self)) is not None:
            health["kueue"] = kueue_ready
        rows = []
        for p in self.procs.load():
            if not p.alive():
                rows.append((p.name, "DOWN", f"pid {p.pid} exited; log: {p.log}"))
                continue
            ok = True
            with contextlib.suppress(httpx.HTTPError, OSError):
                if p.name == "kube-apiserver":
                    ok = self.http(timeout=3).get("/readyz").status_code == 200
                elif p.name in health:
                    ok = self._get_ok(health[p.name], verify=False)
            detail = f"pid {p.pid}" + (f", {self.registry}" if p.name == "registry" else "")
            rows.append((p.name, "ok" if ok else "UNHEALTHY", detail))
        return rows


def _stage(stage: dict[str, Any]) -> dict[str, Any]:
    """kwok's stage as shipped, but `pod-complete` spares pods labelled KWOK_KEEP_RUNNING."""
    if stage["metadata"]["name"] == "pod-complete":
        stage["spec"]["selector"]["matchExpressions"].append(
            {"key": f'.metadata.labels["{KWOK_KEEP_RUNNING}"]', "operator": "DoesNotExist"}
        )
    return stage


def kwok_node(
    name: str,
    gpus: int,
    product: str,
    gpu_taint: bool,
    cpu: str = "64",
    memory: str = "512Gi",
    pods: int = 110,
) -> dict[str, Any]:
    """A simulated GPU node as kwok manages it (annotation) with its capacity in status."""
    taints = [KWOK_TAINT] + ([GPU_TAINT] if gpu_taint else [])
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), GPU: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.present": "true",
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


def add_kwok_nodes(
    cluster: Cluster,
    count: int,
    *,
    gpus: int = 8,
    product: str = "NVIDIA-H100-80GB-HBM3",
    gpu_taint: bool = True,
    prefix: str = "gpu-node",
    start: int = 0,
) -> list[str]:
    names = [f"{prefix}-{i}" for i in range(start, start + count)]
    with cluster.http() as http:
        for name in names:
            r = http.post("/api/v1/nodes", json=kwok_node(name, gpus, product, gpu_taint))
            if r.status_code not in (201, 409):
                raise ClusterError(f"creating node {name}: {r.status_code} {r.text}")
    return names


def wait_nodes_ready(cluster: Cluster, count: int, selector: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    ready = 0
    with cluster.http() as http:
        while time.monotonic() < deadline:
            items = http.get("/api/v1/nodes", params={"labelSelector": selector}).json()["items"]
            ready = sum(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
                for n in items
            )
            if ready >= count:
                return
            time.sleep(0.2)
    raise ClusterError(f"only {ready}/{count} nodes ({selector}) Ready after {timeout:.0f} s")


def print_summary(cluster: Cluster, out: Any = sys.stdout) -> None:
    m = cluster.minio
    registry = (
        f"\n  Registry:   http://{cluster.registry}   (`make images` pushes there; process "
        f"nodes run pods whose image is {cluster.registry}/<repository>@<digest>)"
        if cluster.registry
        else ""
    )
    print(
        f"""
Local cluster is up ({cluster.state_dir}).
  export KUBECONFIG={cluster.kubeconfig}
  export PATH={bin_dir()}:$PATH      # kubectl, helm of the pinned versions
  kubectl get nodes
  MinIO:      {m.url}   (credentials in {cluster.state_dir / "minio-credentials.json"})
  Prometheus: {cluster.prometheus_url}{registry}
Stop it with: make cluster-down""",
        file=out,
    )
