"""Peer benchmark (issue 21, part 2): Kueue admitting N one-GPU batch/v1 Jobs through a
ClusterQueue against Accordion admitting N one-worker TrainingRuns, on identical fresh local
clusters started one after the other in one run.

    flock /tmp/accordion-cluster.lock .venv/bin/python -m benchmarks.peer_kueue \\
        --jobs 2000 --nodes 250 --namespaces 10 [--rounds 2]

Each round starts three clusters in turn (M kwok nodes of 8 GPUs, no Prometheus, as
`operator_scale`) and on each creates the N objects as fast as the apiserver takes them, spread
over the namespaces:

- `kueue-default`: Kueue v0.17.0 (`cluster up --kueue`) with the client rate limits of its
  shipped configuration (QPS 50, burst 100); one ResourceFlavor (node label type=kwok), one
  ClusterQueue with every GPU as nominal quota, a LocalQueue per namespace; Jobs labelled with
  the queue name, their pods staying Running (kwok completes a Job's pods at once otherwise).
- `kueue-raised`: the same with the client rate limits raised (`--raised-qps/--raised-burst`).
- `accordion`: `python -m accordion_operator` with default settings and N TrainingRuns of
  `simulated_runs.run_body` (`operator_scale`'s runs): each run's launcher pod hosts its one
  worker (ACCORDION_LAUNCHER_HOSTS_WORKER, on by default), one pod per run as a Job has.
- `accordion-own-launcher`: the same with ACCORDION_LAUNCHER_HOSTS_WORKER=false: a launcher
  pod and a worker pod per run. (Results before session 13 call the hosting system
  `accordion-hosting` and this one `accordion`.)

`--systems` measures a subset, in the order given.

Measured per system: time until every pod exists and until every pod is Running (the
apiserver's watch, from the first create), CPU-seconds by process over that time, apiserver
writes per job (`operator_scale.apiserver_writes`, node lease renewals included), peak RSS
(VmHWM) of each controller (Kueue or the operator, and kube-controller-manager, whose Job
controller makes Kueue's pods), and the load average before each system (the machine is shared).
Writes benchmarks/results/peer_kueue[-<jobs>x<nodes>].json and a plot of pods Running over time
(.png beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from accordion_dev import kueue as kq
from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.simulated_runs import run_body
from benchmarks._common import machine, prepare_namespaces, start_operator
from benchmarks.operator_scale import (
    META_WATCH,
    TR,
    Progress,
    apiserver_writes,
    cpu_seconds,
    vm_hwm_mb,
)

OUT_DIR = Path(__file__).resolve().parent / "results"
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
QUEUE = "peer"
#: the label of the benchmark's Job pods; the runs' pods are those with a role
JOB_POD = "peer-bench"
RUN_POD = "accordion.dev/role"
#: the controllers whose peak RSS is reported, besides Kueue or the operator
CONTROLLERS = ("kueue", "kube-controller-manager", "kube-scheduler")


class PodWatch(Progress):
    """`operator_scale.Progress`'s watch loop on the pods `params` select, as metadata only
    (the benchmark's own CPU is taken from the machine it measures): when each was first seen.
    With `status.phase=Running` as field selector, a pod is seen when it starts Running."""

    def __init__(self, cluster: Cluster, params: dict[str, str], t0: Callable[[], float]) -> None:
        super().__init__(cluster)
        self.params = params
        self.t0 = t0
        self.seen: dict[str, float] = {}

    def start(self) -> None:
        threading.Thread(
            target=self._watch, args=("/api/v1/pods", self.params, META_WATCH), daemon=True
        ).start()

    def _event(self, ev: dict[str, Any]) -> str | None:
        if ev["type"] == "ERROR":
            return super()._event(ev)
        meta = ev["object"]["metadata"]
        if ev["type"] == "ADDED":
            self.seen.setdefault(
                f"{meta['namespace']}/{meta['name']}", time.monotonic() - self.t0()
            )
        rv: str | None = meta.get("resourceVersion")
        return rv


def _client(cluster: Cluster, conc: int) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    return httpx.AsyncClient(
        base_url=cluster.server, verify=ctx, timeout=60, limits=httpx.Limits(max_connections=conc)
    )


async def create_all(
    cluster: Cluster,
    namespaces: list[str],
    n: int,
    conc: int,
    url: str,
    body: Callable[[str], dict[str, Any]],
) -> float:
    """`operator_scale.create_runs` for any kind: `n` objects `body(name)` POSTed to `url`
    (formatted with the namespace) round-robin over the namespaces, `conc` at a time."""
    sem = asyncio.Semaphore(conc)
    client = _client(cluster, conc)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        ns = namespaces[i % len(namespaces)]
        async with sem:
            for _ in range(5):
                r = await client.post(url.format(ns=ns), json=body(f"j{i:05d}"))
                if r.status_code in (201, 409):
                    return
                await asyncio.sleep(0.5)
            raise RuntimeError(f"create j{i}: {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.aclose()
    return time.monotonic() - t0


def job_body(name: str) -> dict[str, Any]:
    job = kq.gpu_job(name, QUEUE)
    job["spec"]["template"]["metadata"]["labels"][JOB_POD] = "true"
    return job


def setup_kueue(cluster: Cluster, namespaces: list[str], gpus: int) -> None:
    with cluster.http() as http:
        for url, obj in (
            (f"{kq.API}/resourceflavors", kq.resource_flavor("kwok", {"type": "kwok"})),
            (f"{kq.API}/clusterqueues", kq.cluster_queue("peer", "kwok", gpus)),
        ):
            http.post(url, json=obj).raise_for_status()
        for ns in namespaces:
            http.post(
                f"{kq.API}/namespaces/{ns}/localqueues", json=kq.local_queue(QUEUE, ns, "peer")
            ).raise_for_status()

        def active() -> bool:
            cq = http.get(f"{kq.API}/clusterqueues/peer").json()
            conds = (cq.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Active" and c["status"] == "True" for c in conds)

        deadline = time.monotonic() + 60
        while not active():
            if time.monotonic() > deadline:
                raise RuntimeError("ClusterQueue peer not Active after 60 s")
            time.sleep(0.2)


def measure(
    system: str,
    args: argparse.Namespace,
    *,
    qps: float | None = None,
    burst: int | None = None,
    hosts_worker: bool = False,
) -> dict[str, Any]:
    """One system on a fresh cluster: N objects created, until every pod is Running."""
    state = Path(tempfile.mkdtemp(prefix=f"accordion-peer-{system}-"))
    kueue = qps is not None
    cfg = ClusterConfig(
        state_dir=state,
        base_port=free_port_block(first=23400),
        kwok_nodes=args.nodes,
        monitoring=False,
        kueue=kueue,
    )
    if qps is not None and burst is not None:
        cfg.kueue_qps, cfg.kueue_burst = qps, burst
    cluster = Cluster(cfg)
    t_up = time.monotonic()
    cluster.up(log=lambda line: print(line, flush=True))
    up_s = time.monotonic() - t_up
    op: subprocess.Popen[bytes] | None = None
    try:
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        prepare_namespaces(cluster, namespaces)
        if kueue:
            setup_kueue(cluster, namespaces, args.nodes * 8)
            url, body, selector = JOBS, job_body, JOB_POD
            pods_per_job = 1
        else:
            settings = {"ACCORDION_LAUNCHER_HOSTS_WORKER": "true" if hosts_worker else "false"}
            op = start_operator(cluster, state / "operator.log", settings)
            time.sleep(3)
            url, body, selector = TR, run_body, RUN_POD
            pods_per_job = 1 if hosts_worker else 2  # (launcher and) worker
        want = args.jobs * pods_per_job
        load = os.getloadavg()
        t0 = 0.0
        created_pods = PodWatch(cluster, {"labelSelector": selector}, lambda: t0)
        running_pods = PodWatch(
            cluster,
            {"labelSelector": selector, "fieldSelector": "status.phase=Running"},
            lambda: t0,
        )
        watches = (created_pods, running_pods)
        with cluster.http() as http:
            writes_before = apiserver_writes(http)
        procs = {p.name: p.pid for p in cluster.running()}
        if op is not None:
            procs["accordion-operator"] = op.pid
        cpu_before = {name: cpu_seconds(pid) for name, pid in procs.items()}
        t0 = time.monotonic()
        for w in watches:
            w.start()
        created: dict[str, Any] = {}

        def create() -> None:
            try:
                created["s"] = asyncio.run(
                    create_all(cluster, namespaces, args.jobs, args.concurrency, url, body)
                )
                print(f"[bench] {system}: {args.jobs} created in {created['s']:.1f} s", flush=True)
            except BaseException as exc:  # reported by the main thread
                created["error"] = exc

        creator = threading.Thread(target=create, name="create", daemon=True)
        creator.start()
        samples: list[tuple[float, int, int]] = []
        while True:
            elapsed = time.monotonic() - t0
            n_created, n_running = len(created_pods.seen), len(running_pods.seen)
            samples.append((round(elapsed, 1), n_created, n_running))
            print(
                f"[bench] {system} t={elapsed:6.1f} s pods {n_created}/{want} created, "
                f"{n_running} Running",
                flush=True,
            )
            if "error" in created:
                raise created["error"]
            for w in watches:
                if w.error is not None:
                    raise w.error
            if n_running >= want and not creator.is_alive():
                break
            if elapsed > args.timeout:
                raise TimeoutError(f"{system}: {n_running}/{want} pods Running after {elapsed} s")
            time.sleep(0.5)
        for w in watches:
            w.stop.set()
        with cluster.http(timeout=120) as http:
            after = apiserver_writes(http)
        writes = {
            k: v - writes_before.get(k, 0) for k, v in after.items() if v > writes_before.get(k, 0)
        }
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in procs.items()}
        rss = {
            name: round(vm_hwm_mb(pid), 1)
            for name, pid in procs.items()
            if name in (*CONTROLLERS, "accordion-operator")
        }
        return {
            "system": system,
            **({"kueue_client_qps": qps, "kueue_client_burst": burst} if kueue else {}),
            "cluster_up_seconds": round(up_s, 1),
            "create_seconds": round(created["s"], 1),
            "pods": want,
            "all_pods_created_seconds": round(max(created_pods.seen.values()), 1),
            "all_pods_running_seconds": round(max(running_pods.seen.values()), 1),
            "cpu_seconds_by_process": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
            "cpu_seconds_total": round(sum(cpu.values()), 1),
            "peak_rss_mb": rss,
            "apiserver_writes": writes,
            "apiserver_writes_per_job": round(sum(writes.values()) / args.jobs, 2),
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "progress": samples[:: max(1, len(samples) // 80)] + samples[-1:],
        }
    finally:
        if op is not None:
            op.terminate()
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()
        cluster.down(purge=True)


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Accordion's time to all pods Running over Kueue's, per round (the ratio within a round
    is the figure: absolute times on a shared machine vary from run to run)."""
    out: dict[str, Any] = {}
    for i, r in enumerate(rounds):
        out[f"round_{i + 1}"] = {
            f"{a.replace('-', '_')}_over_{k.replace('-', '_')}": round(
                r[a]["all_pods_running_seconds"] / r[k]["all_pods_running_seconds"], 2
            )
            for a in ("accordion", "accordion-own-launcher")
            if a in r
            for k in ("kueue-default", "kueue-raised")
            if k in r
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    styles = {
        "kueue-default": "--",
        "kueue-raised": "-.",
        "accordion": "-",
        "accordion-own-launcher": ":",
    }
    for i, rnd in enumerate(result["rounds"]):
        for system, r in rnd.items():
            t = [s[0] for s in r["progress"]]
            # a share of all pods: a TrainingRun has one (its launcher hosts the worker), or
            # two with a launcher of its own; a Job one
            running = [100 * s[2] / r["pods"] for s in r["progress"]]
            label = f"{system}: {r['all_pods_running_seconds']:.0f} s"
            if len(result["rounds"]) > 1:
                label = f"round {i + 1} {label}"
            ax.plot(t, running, linestyle=styles[system], label=label)
    ax.set_xlabel("seconds since the first job was created")
    ax.set_ylabel("pods Running, % of all (a Job: 1 pod, a TrainingRun: 1, own launcher: 2)")
    ax.set_title(
        f"{result['jobs']:,} one-GPU jobs, {result['nodes']} kwok nodes x 8 GPUs "
        "(shared 2-core VM)\nKueue v0.17.0 batch/v1 Jobs vs Accordion TrainingRuns"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=250)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--raised-qps", type=float, default=500.0)
    ap.add_argument("--raised-burst", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900)
    systems = ("kueue-default", "kueue-raised", "accordion", "accordion-own-launcher")
    ap.add_argument("--systems", nargs="+", choices=systems, default=list(systems))
    args = ap.parse_args()
    if args.jobs > args.nodes * 8:
        ap.error("every job must fit: --jobs <= 8 x --nodes")
    rounds = []
    for _ in range(args.rounds):
        how: dict[str, Any] = {
            "kueue-default": lambda: measure(
                "kueue-default", args, qps=kq.DEFAULT_QPS, burst=kq.DEFAULT_BURST
            ),
            "kueue-raised": lambda: measure(
                "kueue-raised", args, qps=args.raised_qps, burst=args.raised_burst
            ),
            "accordion": lambda: measure("accordion", args, hosts_worker=True),
            "accordion-own-launcher": lambda: measure("accordion-own-launcher", args),
        }
        rounds.append({system: how[system]() for system in args.systems})
    result = {
        "benchmark": "peer_kueue",
        "jobs": args.jobs,
        "nodes": args.nodes,
        "gpus_per_node": 8,
        "namespaces": args.namespaces,
        "kueue_version": "v0.17.0",
        "accordion_over_kueue_all_pods_running": summary(rounds),
        # the operator measured is the working tree's: uncommitted changes to it, if any
        "operator_uncommitted": subprocess.run(
            ["git", "status", "--porcelain", "operator/"],
            capture_output=True,
            text=True,
            check=False,
            cwd=OUT_DIR.parents[1],
        ).stdout.split("\n")[:-1],
        "rounds": rounds,
        "machine": {
            **machine(),
            "note": "shared 2-core VM: apiserver, etcd, scheduler, controller-manager, kwok "
            "and the controller under test on the same 2 cores; other sessions' work shows "
            "in the load average",
        },
    }
    stem = "peer_kueue" + (
        "" if (args.jobs, args.nodes) == (2000, 250) else f"-{args.jobs}x{args.nodes}"
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{stem}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT_DIR / f"{stem}.png")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    for rnd in rounds:
        for system, r in rnd.items():
            print(
                f"[bench] {system}: all pods Running {r['all_pods_running_seconds']} s, "
                f"writes/job {r['apiserver_writes_per_job']}, CPU {r['cpu_seconds_total']} s, "
                f"RSS {r['peak_rss_mb']}"
            )
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
