"""Operator at scale: N one-worker TrainingRuns on M kwok nodes with 8 GPUs each.

    .venv/bin/python -m benchmarks.operator_scale --runs 10000 --nodes 1000

Starts its own local cluster (accordion_dev.cluster, state in a temporary directory), applies the
CRD, starts `python -m accordion_operator` (cluster-wide, default settings, and the ACCORDION_*
variables of the benchmark's environment, e.g. ACCORDION_LAUNCHER_HOSTS_WORKER=true), creates
the runs as fast as the apiserver takes them and measures the time until every run is admitted
with its worker pod (or its launcher hosting the worker) created, plus the operator's peak RSS
(VmHWM). Issue 4 targets: <= 60 s, <= 400 MB at 10,000 runs x 1,000 nodes. Writes
benchmarks/results/operator_scale[-<runs>x<nodes>].json.

`--floor` starts no operator: the benchmark itself makes the writes of the operator's first
decision for each run right after creating it (`floor_writes`), which measures what this control
plane on this machine needs for Accordion's write pattern alone; the difference to the real run
is the operator's own cost (-floor.json).

`--apiserver-profile=S` records a Go CPU profile of the apiserver for S seconds, starting 10 s
into the run, and writes the functions with the most cumulative time (`go tool pprof -top -cum`)
into the result: where the apiserver's time goes, by code path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.simulated_runs import run_body
from accordion_operator.api.trainingrun import REASON_GANG_ADMITTED, REASON_QUEUED, TrainingRun
from accordion_operator.config import Config
from accordion_operator.core.kube import Kube
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller
from accordion_operator.trainingrun.decide import decide_run
from accordion_operator.trainingrun.observe import Children
from benchmarks._common import prepare_namespaces, start_operator

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "results"
TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"
META_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


async def create_runs(cluster: Cluster, namespaces: list[str], runs: int, conc: int) -> float:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    sem = asyncio.Semaphore(conc)
    client = httpx.AsyncClient(
        base_url=cluster.server,
        verify=ctx,
        timeout=60,
        limits=httpx.Limits(max_connections=conc),
    )
    t0 = time.monotonic()

    async def one(i: int) -> None:
        ns = namespaces[i % len(namespaces)]
        async with sem:
            for _ in range(5):
                r = await client.post(TR.format(ns=ns), json=run_body(f"r{i:05d}"))
                if r.status_code in (201, 409):
                    return
                await asyncio.sleep(0.5)
            raise RuntimeError(f"create r{i}: {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one(i) for i in range(runs)))
    await client.aclose()
    return time.monotonic() - t0


async def floor_writes(cluster: Cluster, namespaces: list[str], runs: int, conc: int) -> float:
    """`--floor`: no operator. Right after creating each run, the benchmark makes the writes the
    operator's first decision for it makes: decide_run's plan (ssh Secret, the namespace's
    launcher identity once, launcher and worker pod, status patch, event) executed by the
    operator's own code and client, one GPU granted in creation order until the GPUs are
    taken. What is left out is everything that makes the operator an operator (watches, cache,
    allocator, passes), so the time is this control plane's floor for Accordion's write
    pattern."""
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    cfg = Config.from_env()  # ACCORDION_LAUNCHER_HOSTS_WORKER=true: the hosting write pattern
    kube = await Kube.connect(cfg)
    ctl = Controller(cfg, kube, ClusterCache(cfg))
    gpus = cluster.config.kwok_nodes * 8
    sem = asyncio.Semaphore(conc)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        body = run_body(f"r{i:05d}")
        body["metadata"]["namespace"] = namespaces[i % len(namespaces)]
        async with sem:
            code, created = await kube.create(body)
            if code != 201:
                raise RuntimeError(f"create r{i}: {code} {created.get('message')}")
            run = TrainingRun.model_validate(created)
            fits = i < gpus
            grant = Grant(int(fits), REASON_GANG_ADMITTED if fits else REASON_QUEUED, "floor")
            plan = decide_run(run, Children(), grant, invalid=None, cfg=cfg, now=time.time())
            await ctl._execute(run, plan)

    await asyncio.gather(*(one(i) for i in range(runs)))
    await kube.close()
    return time.monotonic() - t0


def decision(run: dict[str, Any]) -> tuple[str, float] | None:
    """("admitted" | "queued", seconds from creation) once the run's Admitted condition is True,
    or False for want of GPUs (lastTransitionTime: whole seconds, as the apiserver writes)."""
    for c in (run.get("status") or {}).get("conditions") or []:
        if c["type"] != "Admitted":
            continue
        if c["status"] == "True":
            state = "admitted"
        elif c["status"] == "False" and c.get("reason") == "WaitingForGPUs":
            state = "queued"
        else:
            return None
        return state, _epoch(c["lastTransitionTime"]) - _epoch(run["metadata"]["creationTimestamp"])
    return None


class Progress:
    """Worker pods and run decisions as the apiserver's watches report them. Watches, not
    polled LISTs: an apiserver profile showed LISTs of 10,000 runs every 2 s taking 7 % of the
    apiserver's CPU, which the benchmark would have taken from what it measures."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.workers: set[str] = set()
        self.decided: dict[str, tuple[str, float]] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def start(self) -> None:
        watches = [
            # the pods that hold a worker: worker pods, and launchers that host worker 0
            ("/api/v1/pods", {"labelSelector": "accordion.dev/worker-index"}, META_WATCH),
            ("/apis/accordion.dev/v1alpha1/trainingruns", {}, "application/json"),
        ]
        for url, params, accept in watches:
            threading.Thread(
                target=self._watch, args=(url, params, accept), daemon=True, name=url
            ).start()

    def _watch(self, url: str, params: dict[str, str], accept: str) -> None:
        rv = "0"
        try:
            with self.cluster.http(timeout=None) as http:  # a watch may be quiet for long
                while not self.stop.is_set():
                    query = {**params, "watch": "1", "resourceVersion": rv}
                    with http.stream("GET", url, params=query, headers={"Accept": accept}) as r:
                        if r.status_code == 429:  # flow control sheds load under the burst
                            time.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        r.raise_for_status()
                        for line in r.iter_lines():
                            if line:
                                rv = self._event(json.loads(line)) or rv
        except BaseException as exc:  # reported by the main thread
            if not self.stop.is_set():
                self.error = exc

    def _event(self, ev: dict[str, Any]) -> str | None:
        obj = ev["object"]
        if ev["type"] == "ERROR":
            if obj.get("code") == 410:  # history compacted: start over from the watch cache
                return "0"
            raise RuntimeError(f"watch failed: {obj.get('message')}")
        meta = obj["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        if obj.get("kind", "").startswith("PartialObjectMetadata"):
            if ev["type"] == "DELETED":
                self.workers.discard(key)
            elif ev["type"] == "ADDED":
                self.workers.add(key)
        elif ev["type"] in ("ADDED", "MODIFIED") and (d := decision(obj)) is not None:
            self.decided[key] = d
        rv: str | None = meta.get("resourceVersion")
        return rv

    def counts(self) -> tuple[int, int, int]:
        """(worker pods, runs admitted, runs queued)"""
        states = [state for state, _ in list(self.decided.values())]
        return len(self.workers), states.count("admitted"), states.count("queued")

    def delays(self) -> list[float]:
        return [delay for _, delay in list(self.decided.values())]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p90": q[89], "p99": q[98], "max": max(values)}


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children (clock ticks -> seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def apiserver_writes(http: httpx.Client) -> dict[str, int]:
    """Mutating requests the apiserver served, by verb and resource: where the time goes."""
    out: dict[str, int] = {}
    for line in http.get("/metrics").text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in ("POST", "PATCH", "PUT", "DELETE", "APPLY"):
            key = f"{labels['verb']} {labels.get('resource', '')}"
            if labels.get("subresource"):
                key += "/" + labels["subresource"]
            out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


#: where a sample of the apiserver's CPU profile goes: the first of these whose function is on
#: its stack (root to leaf order does not matter: they do not nest, except GC assists, which
#: count to the request that allocated)
PROFILE_PATHS = (
    ("PATCH trainingruns/status (operator, launcher)", "customresource.(*StatusREST).Update"),
    ("PATCH pods/status (kwok's simulated kubelets)", "pod/storage.(*StatusREST).Update"),
    ("POST pods/binding (scheduler)", "pod/storage.(*BindingREST).Create"),
    ("POST trainingruns (the benchmark creating runs)", "crdHandler).serveResource.CreateResource"),
    ("other POSTs (pods, Secrets, RBAC, Events)", "createHandler"),
    ("other PUTs and PATCHes (node leases, ...)", "UpdateResource"),
    ("other PUTs and PATCHes (node leases, ...)", "PatchResource"),
    # before ListResource: the apiserver serves a watch from inside its LIST handler
    ("WATCH: encoding and sending events", "serveWatch"),
    ("WATCH: encoding and sending events", "WatchServer"),
    ("LIST", "ListResource"),
    ("watch cache and etcd watches", "storage/cacher."),
    ("watch cache and etcd watches", "etcd3.(*watchChan)"),
    ("watch cache and etcd watches", "etcd/client/v3.(*watchGRPCStream)"),
    ("garbage collector (background)", "runtime.gcBgMarkWorker"),
    ("HTTP, TLS, authn/authz, flow control", "net/http"),
)


def profile_paths(traces: str) -> dict[str, float]:
    """Percent of the profile's CPU time per PROFILE_PATHS entry, from `go tool pprof -traces`
    (one block per distinct stack: its time on the first line, then its frames)."""
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    spent: dict[str, float] = {}
    for block in traces.split(
        "-----------+-------------------------------------------------------"
    ):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        m = re.match(r"([\d.]+)(ns|us|ms|s)\s+(.*)", lines[0]) if lines else None
        if not m:
            continue
        seconds = float(m.group(1)) * unit[m.group(2)]
        frames = [m.group(3), *lines[1:]]
        path = next((name for name, fn in PROFILE_PATHS if any(fn in f for f in frames)), "other")
        spent[path] = spent.get(path, 0.0) + seconds
    total = sum(spent.values()) or 1.0
    return {k: round(100 * v / total, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def profile_apiserver(cluster: Cluster, delay: float, seconds: int, out: dict[str, Any]) -> None:
    """After `delay`, a CPU profile of the apiserver over `seconds` (Go's pprof; the cluster
    must serve it: ClusterConfig.apiserver_profiling), kept in the temp directory for
    `go tool pprof`. `out`: percent of CPU time by request path (`profile_paths`) and the
    functions of at least 2 % cumulative time; `out["error"]` if it failed."""
    time.sleep(delay)
    path = Path(tempfile.gettempdir()) / "accordion-apiserver.pprof"
    try:
        with cluster.http(timeout=seconds + 60) as http:
            r = http.get("/debug/pprof/profile", params={"seconds": seconds})
            r.raise_for_status()
        path.write_bytes(r.content)
        pprof = ["go", "tool", "pprof"]
        top = subprocess.run(
            [*pprof, "-top", "-cum", "-nodecount=80", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        traces = subprocess.run(
            [*pprof, "-traces", str(path)], check=True, capture_output=True, text=True
        ).stdout
    except (httpx.HTTPError, OSError, subprocess.CalledProcessError) as exc:
        out["error"] = str(exc)
        return
    print(f"[bench] apiserver CPU profile: go tool pprof {path}", flush=True)
    rows = []
    for line in top.splitlines():
        # flat  flat%   sum%        cum   cum%   function
        m = re.match(r"\s*\S+\s+([\d.]+)%\s+[\d.]+%\s+\S+\s+([\d.]+)%\s+(.+)$", line)
        if m and float(m.group(2)) >= 2.0:
            rows.append(
                {"cum_pct": float(m.group(2)), "flat_pct": float(m.group(1)), "fn": m.group(3)}
            )
    out["seconds"] = seconds
    out["by_request_path_pct"] = profile_paths(traces)
    out["top_cumulative"] = rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=1_000)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--suffix", default="", help="appended to the result file's name")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="no operator: the benchmark makes the operator's writes itself (see floor_writes)",
    )
    ap.add_argument(
        "--apiserver-profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="record a CPU profile of the apiserver for this long, from 10 s into the run",
    )
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="accordion-bench-"))
    # No Prometheus: it would scrape every simulated worker pod (kwok IPs lead nowhere), and
    # took a fifth of the 2 cores at 10,000 runs (operator_scale-10000x1000-with-monitoring.json).
    cluster = Cluster(
        ClusterConfig(
            state_dir=state,
            base_port=free_port_block(first=23400),
            kwok_nodes=args.nodes,
            monitoring=False,
            apiserver_profiling=args.apiserver_profile > 0,
        )
    )
    t_up = time.monotonic()
    cluster.up(log=lambda line: print(line, flush=True))
    up_s = time.monotonic() - t_up
    op: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {}
    try:
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        prepare_namespaces(cluster, namespaces)
        log_path = state / "operator.log"
        if not args.floor:
            op = start_operator(cluster, log_path)
            time.sleep(3)
        # watching before the first run exists: its events are all seen
        progress = Progress(cluster)
        progress.start()
        with cluster.http() as http:
            writes_before = apiserver_writes(http)
        cpu_before = {p.name: cpu_seconds(p.pid) for p in cluster.running()}
        # the operator, or with --floor the benchmark process making its writes
        actor = op.pid if op is not None else os.getpid()
        cpu_before["operator"] = cpu_seconds(actor)
        t0 = time.monotonic()
        make = floor_writes if args.floor else create_runs
        created: dict[str, Any] = {}

        def create() -> None:
            try:
                created["s"] = asyncio.run(make(cluster, namespaces, args.runs, args.concurrency))
                print(f"[bench] {args.runs} runs created in {created['s']:.1f} s", flush=True)
            except BaseException as exc:  # reported by the main thread
                created["error"] = exc

        # created in a thread, so that progress is sampled from the first run on
        creator = threading.Thread(target=create, name="create-runs", daemon=True)
        creator.start()
        profile: dict[str, Any] = {}
        profiler = threading.Thread(
            target=profile_apiserver,
            args=(cluster, 10.0, args.apiserver_profile, profile),
            daemon=True,
        )
        if args.apiserver_profile:
            profiler.start()
        # One GPU per run: runs beyond the cluster's GPUs are queued, not admitted (10,000 runs
        # on 1,000 nodes of 8 GPUs: 8,000 admitted with pods, 2,000 Queued). Done when every
        # run that fits has its worker pod and every run has been admitted or queued.
        fits = min(args.runs, args.nodes * 8)
        samples: list[tuple[float, int]] = []
        while True:
            n, admitted, queued = progress.counts()
            elapsed = time.monotonic() - t0
            samples.append((round(elapsed, 1), n))
            print(
                f"[bench] t={elapsed:6.1f} s worker pods {n}/{fits}, "
                f"admitted {admitted}, queued {queued}",
                flush=True,
            )
            if "error" in created:
                raise created["error"]
            if progress.error is not None:
                raise progress.error
            done = n >= fits and admitted + queued >= args.runs and not creator.is_alive()
            if done or elapsed > args.timeout:
                break
            time.sleep(0.5)
        done_s = time.monotonic() - t0
        progress.stop.set()
        delays = progress.delays()
        with cluster.http(timeout=120) as http:
            writes = {
                k: v - writes_before.get(k, 0)
                for k, v in apiserver_writes(http).items()
                if v - writes_before.get(k, 0) > 0
            }
        rss = vm_hwm_mb(op.pid) if op is not None else None
        cpu = {p.name: cpu_seconds(p.pid) for p in cluster.running()}
        cpu["operator"] = cpu_seconds(actor)
        if profiler.is_alive():
            print("[bench] waiting for the apiserver profile", flush=True)
            profiler.join()
        cpu = {k: round(v - cpu_before.get(k, 0.0), 1) for k, v in cpu.items()}
        passes = [
            line
            for line in (log_path.read_text().splitlines() if op is not None else [])
            if "accordion.controller: pass" in line
        ]
        result = {
            "benchmark": "operator_scale",
            "mode": "floor: no operator, its writes made by the benchmark"
            if args.floor
            else "operator",
            "runs": args.runs,
            "nodes": args.nodes,
            "gpus_per_node": 8,
            "namespaces": args.namespaces,
            "cluster_up_seconds": round(up_s, 1),
            "create_runs_seconds": round(created.get("s", float("nan")), 1),
            # every run admitted with its worker pod, or queued when the GPUs are all taken
            "all_admitted_with_pods_seconds": round(done_s, 1),
            "gpus": args.nodes * 8,
            "runs_admitted": admitted,
            "runs_queued": queued,
            # from a run's creation to its first decision (admitted, or queued for GPUs)
            "decision_delay_seconds": percentiles(delays),
            "worker_pods": samples[-1][1],
            "operator_peak_rss_mb": round(rss, 1) if rss is not None else None,
            "targets": {"seconds": 60, "rss_mb": 400, "at": "10000 runs x 1000 nodes"},
            "cpu_seconds_by_process": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
            "apiserver_writes": writes,
            "apiserver_writes_per_run": round(sum(writes.values()) / max(1, args.runs), 2),
            "progress": samples[:: max(1, len(samples) // 40)],
            **({"apiserver_cpu_profile": profile} if args.apiserver_profile else {}),
            "operator_passes_tail": passes[-8:],
            "python": platform.python_version(),
            "monitoring": False,
            # operator settings changed from their defaults through the environment
            "operator_env": {k: v for k, v in os.environ.items() if k.startswith("ACCORDION_")},
            "machine": "shared 2-core VM: apiserver, etcd, scheduler, kwok and the operator on "
            "the same 2 cores",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        if op is not None:
            op.terminate()
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()
        cluster.down(purge=True)
    size = "" if (args.runs, args.nodes) == (10_000, 1_000) else f"-{args.runs}x{args.nodes}"
    name = f"operator_scale{size}{'-floor' if args.floor else ''}{args.suffix}.json"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("progress",)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
