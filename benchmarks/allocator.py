"""Allocator decision time at 10,000 runs x 1,000 nodes (issue 4 target: <= 50 ms), and with
GPU quotas and fair-share weights on 100 namespaces (issue 19).

    .venv/bin/python benchmarks/allocator.py [--runs 10000] [--nodes 1000] [--repeat 15]
    .venv/bin/python benchmarks/allocator.py --baseline cd9853e   # in-process A/B

Writes benchmarks/results/allocator.json. The workload is a busy cluster in steady state:
1,000 kwok-like nodes with 8 GPUs (GPU-tainted, two GPU products), 5% of the GPUs held by foreign
pods, and 10,000 runs in 50 namespaces over 4 priorities (the top one a class that may preempt
other namespaces) with elastic bounds, where half were admitted before (so the cooldown path
runs) and most of the rest queue.

Scenario `quotas`: the same runs in 100 namespaces; three quarters of them with a ResourceQuota
on `requests.nvidia.com/gpu` (hard 20-100 GPUs, below what their runs ask for), 15 of those also
with one scoped to the top class, a fair-share weight of 1, 2 or 3 per namespace, and the
foreign pods spread over the namespaces (so that quotas count them).

This VM is noisy (the same code measured 33-90 ms in different windows): `--baseline REV` loads
the allocator of git revision REV as a second module and times both on the same workloads,
alternating call by call, so that both see the same window. It also compares the two
decisions (grants with their reasons and messages, planned node use, placements, GPUs per
namespace) on both workloads and on `--check N` small random workloads (default 500: few
nodes, full clusters, quotas, weights, priorities, cooldowns, zero-GPU and zero-minimum runs),
and fails when they differ unless `--allow-changes` (for a revision whose policy differs).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from accordion_operator.trainingrun import allocator as current

OUT = Path(__file__).resolve().parent / "results" / "allocator.json"
ROOT = Path(__file__).resolve().parents[1]
ALLOCATOR = "operator/accordion_operator/trainingrun/allocator.py"


def workload(
    runs: int, nodes: int, seed: int = 4, *, m: ModuleType = current, namespaces: int = 50
) -> tuple[list[Any], list[Any], list[Any]]:
    """Nodes, foreign pods and runs, built with module `m`'s types (a baseline allocator's own
    classes). The random draws do not depend on `namespaces`: the 100-namespace scenario has
    the same nodes, pods and runs, spread over more namespaces."""
    rng = random.Random(seed)
    gpu_taint = m.Taint("nvidia.com/gpu", "present", "NoSchedule")
    ns = [
        m.Node(
            f"gpu-node-{i:05d}",
            8,
            {"nvidia.com/gpu.product": "H100" if i % 4 else "A100", "type": "kwok"},
            (gpu_taint,),
            unschedulable=(i % 97 == 0),
        )
        for i in range(nodes)
    ]
    pods = [m.PodUse(f"gpu-node-{rng.randrange(nodes):05d}", 1) for _ in range(nodes * 8 // 20)]
    tolerate = (m.Toleration("nvidia.com/gpu", "Exists"),)
    placements = [
        m.Placement(tolerations=tolerate),
        m.Placement(node_selector=(("nvidia.com/gpu.product", "H100"),), tolerations=tolerate),
        m.Placement(node_selector=(("nvidia.com/gpu.product", "A100"),), tolerations=tolerate),
    ]
    reqs = []
    for i in range(runs):
        lo = rng.choice([1, 1, 1, 2, 4])
        hi = lo * rng.choice([1, 1, 2, 4])
        admitted = i < runs // 2
        priority = rng.choice([0, 0, 0, 1, 2, 3])
        reqs.append(
            m.RunRequest(
                key=f"ns-{i % namespaces}/run-{i:05d}",
                uid=f"uid-{i:05d}",
                namespace=f"ns-{i % namespaces}",
                priority=priority,
                # the top class may preempt other namespaces, the others their own only
                preempts="cluster" if priority == 3 else "namespace",
                created=float(i),
                min=lo,
                max=hi,
                requested=hi,
                gpus_per_worker=rng.choice([1, 1, 1, 2]),
                placement=rng.choice(placements),
                previous=hi if admitted else 0,
                last_scale=float(runs - rng.randrange(60)) if admitted else None,
            )
        )
    return ns, pods, reqs


def quota_workload(
    runs: int, nodes: int, namespaces: int = 100, *, m: ModuleType = current
) -> tuple[list[Any], list[Any], list[Any], dict[str, Any]]:
    """The `quotas` scenario (module docstring): nodes, pods, runs and decide_allocation's
    keyword arguments, built with module `m`'s types."""
    ns, pods, reqs = workload(runs, nodes, m=m, namespaces=namespaces)
    rng = random.Random(19)
    reqs = [dataclasses.replace(r, priority_class=f"class-{r.priority}") for r in reqs]
    pods = [
        dataclasses.replace(p, namespace=f"ns-{i % namespaces}", priority_class="class-0")
        for i, p in enumerate(pods)
    ]
    quotas = []
    for k in range(namespaces):
        if k % 4 == 3:
            continue  # a quarter of the namespaces have no GPU quota
        quotas.append(m.GpuQuota(f"ns-{k}", "gpus", rng.randrange(20, 101)))
        if k % 5 == 0:
            only = frozenset({"class-3"})
            quotas.append(m.GpuQuota(f"ns-{k}", "top-class", rng.randrange(4, 17), only))
    weights = {f"ns-{k}": float(rng.choice([1, 1, 2, 3])) for k in range(namespaces)}
    return ns, pods, reqs, {"quotas": quotas, "weights": weights}


def random_workload(seed: int, m: ModuleType) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A small random decide_allocation call (positional and keyword arguments) built with
    module `m`'s types: the corners a big steady-state workload does not reach (nodes of 0-16
    GPUs, taints, affinity, full clusters, runs of 0 GPUs or a minimum of 0, future
    lastScaleTimes, preempted runs, pods of runs and strays, quotas scoped to classes, weights
    that count as 1)."""
    rng = random.Random(seed)
    namespaces = rng.randint(1, 6)
    taint = m.Taint("gpu", "x")
    nodes = [
        m.Node(
            f"n{i:03d}",
            rng.choice([0, 1, 2, 4, 8, 8, 16]),
            {"p": rng.choice("ab"), "z": rng.choice("xy")},
            (taint,) if rng.random() < 0.3 else (),
            unschedulable=rng.random() < 0.05,
        )
        for i in range(rng.randint(0, 40))
    ]
    placements = [
        m.Placement(),
        m.Placement(tolerations=(m.Toleration("gpu", "Exists"),)),
        m.Placement(node_selector=(("p", "a"),)),
        m.Placement(node_selector=(("p", "b"),), tolerations=(m.Toleration(None, "Exists"),)),
        m.Placement(required_terms=((m.Requirement("z", "In", ("x",)),),)),
    ]
    classes = [None, "hi", "lo"]
    runs = []
    for i in range(rng.randint(0, 60)):
        lo = rng.choice([0, 1, 1, 2, 3, 4])
        hi = lo + rng.choice([0, 0, 1, 3, 8])
        ns = f"ns{rng.randrange(namespaces)}"
        runs.append(
            m.RunRequest(
                key=f"{ns}/r{i}",
                uid=f"u{i}",
                priority=rng.choice([0, 0, 1, 5, -1]),
                created=float(rng.randint(0, 10)),
                min=lo,
                max=hi,
                requested=rng.choice([hi, lo, hi + 2]),
                gpus_per_worker=rng.choice([0, 1, 1, 2, 3, 4, 8]),
                placement=rng.choice(placements),
                previous=rng.choice([0, 0, lo, hi, hi + 1, max(lo - 1, 0)]),
                last_scale=rng.choice([None, 95.0, 80.0, 120.0]),
                preempts=rng.choice(["never", "namespace", "cluster"]),
                namespace=ns,
                preempted=rng.random() < 0.1,
                priority_class=rng.choice(classes),
            )
        )
    pods = []
    for _ in range(rng.randint(0, 30)):
        run = rng.choice(runs) if runs and rng.random() < 0.5 else None
        pods.append(
            m.PodUse(
                rng.choice([n.name for n in nodes] + [""]),
                rng.randint(0, 3),
                run=run.key if run else None,
                owner=(run.uid if rng.random() < 0.8 else "other") if run else "",
                namespace=f"ns{rng.randrange(namespaces)}",
                priority_class=rng.choice(classes),
            )
        )
    quotas = []
    for k in range(namespaces):
        if rng.random() < 0.6:
            quotas.append(m.GpuQuota(f"ns{k}", "q", rng.randint(0, 30)))
        if rng.random() < 0.3:
            only = frozenset({"hi"}) if rng.random() < 0.5 else None
            exclude = frozenset({None}) if rng.random() < 0.5 else frozenset()
            quotas.append(m.GpuQuota(f"ns{k}", "s", rng.randint(0, 10), only, exclude))
    weights = [1.0, 2.0, 0.5, 0.0, float("inf"), 3.0]
    kw: dict[str, Any] = {}
    if rng.random() < 0.7:
        kw["quotas"] = quotas
    if rng.random() < 0.7:
        kw["weights"] = {f"ns{k}": rng.choice(weights) for k in range(namespaces)}
    return (nodes, pods, runs, 100.0, rng.choice([0.0, 30.0])), kw


def decision(alloc: Any) -> tuple[Any, ...]:
    """All that an Allocation decides, comparable across allocator modules."""
    return (
        [(k, g.workers, g.reason, g.message) for k, g in alloc.grants.items()],
        alloc.node_used,
        alloc.placements,
        alloc.namespace_gpus,
    )


def compare(
    base: ModuleType, base_plain: Any, plain: Any, base_quota: Any, quota: Any, random_runs: int
) -> list[str]:
    """The workloads on which the allocator `base` decides otherwise than the current one."""
    differ = []
    if decision(base_plain) != decision(plain):
        differ.append("the 10,000-run workload")
    if decision(base_quota) != decision(quota):
        differ.append("the quota workload")
    for seed in range(random_runs):
        a_args, a_kw = random_workload(seed, current)
        b_args, b_kw = random_workload(seed, base)
        a = current.decide_allocation(*a_args, **a_kw)
        if decision(a) != decision(base.decide_allocation(*b_args, **b_kw)):
            differ.append(f"random workload {seed}")
    return differ


def load_baseline(rev: str) -> ModuleType:
    """The allocator as it was at git revision `rev`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{ALLOCATOR}"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "allocator_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("allocator_baseline", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["allocator_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def summary(times: list[float], cpu: list[float]) -> dict[str, float]:
    """Wall time, and the process's CPU time (less disturbed by other processes on the VM)."""
    return {
        "median_ms": round(statistics.median(times) * 1000, 2),
        "min_ms": round(min(times) * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
        "cpu_median_ms": round(statistics.median(cpu) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--baseline", help="git revision of the allocator to time alongside")
    parser.add_argument(
        "--check", type=int, default=500, help="random workloads to compare with --baseline"
    )
    parser.add_argument(
        "--allow-changes", action="store_true", help="report, not fail, decisions that differ"
    )
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    now = float(args.runs)
    ns, pods, reqs = workload(args.runs, args.nodes)
    qns, qpods, qreqs, qkw = quota_workload(args.runs, args.nodes)
    cases: dict[str, Callable[[], Any]] = {
        "current": lambda: current.decide_allocation(ns, pods, reqs, now=now, cooldown=30.0),
        "current_quotas_100ns": lambda: current.decide_allocation(
            qns, qpods, qreqs, now=now, cooldown=30.0, **qkw
        ),
    }
    if args.baseline:
        base = load_baseline(args.baseline)
        bns, bpods, breqs = workload(args.runs, args.nodes, m=base)
        cases["baseline"] = lambda: base.decide_allocation(bns, bpods, breqs, now=now)
        if hasattr(base, "GpuQuota"):
            bq = quota_workload(args.runs, args.nodes, m=base)
            cases["baseline_quotas_100ns"] = lambda: base.decide_allocation(
                bq[0], bq[1], bq[2], now=now, cooldown=30.0, **bq[3]
            )
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    results: dict[str, Any] = {}
    for _ in range(args.repeat):  # alternating: every case sees the same noise
        for name, call in cases.items():
            c0, t0 = time.process_time(), time.perf_counter()
            results[name] = call()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    plain, quota = results["current"], results["current_quotas_100ns"]
    gpus_total = sum(n.gpus for n in ns if not n.unschedulable)
    over = [
        q.name
        for q in qkw["quotas"]
        if q.only is None and quota.namespace_gpus.get(q.namespace, 0) > q.hard
    ]
    assert not over, over  # scoped quotas are checked by the unit tests' properties
    capped = [
        q
        for q in qkw["quotas"]
        if q.only is None and quota.namespace_gpus.get(q.namespace, 0) > q.hard - 8
    ]
    out: dict[str, Any] = {
        "benchmark": "allocator.decide_allocation",
        "runs": args.runs,
        "nodes": args.nodes,
        "gpus_schedulable": gpus_total,
        "gpus_planned_incl_foreign": sum(plain.node_used.values()),
        "runs_admitted": sum(1 for g in plain.grants.values() if g.admitted),
        "repeat": args.repeat,
        **summary(times["current"], cpu["current"]),
        "target_ms": 50,
        "quotas_100_namespaces": {
            "namespaces": 100,
            "quotas": len(qkw["quotas"]),
            "namespaces_within_8_gpus_of_their_quota": len(capped),
            "gpus_planned_incl_foreign": sum(quota.node_used.values()),
            "runs_admitted": sum(1 for g in quota.grants.values() if g.admitted),
            "runs_quota_exceeded": sum(
                1 for g in quota.grants.values() if g.reason == "QuotaExceeded"
            ),
            **summary(times["current_quotas_100ns"], cpu["current_quotas_100ns"]),
        },
        "python": platform.python_version(),
        "machine": f"{platform.machine()} ({platform.processor() or 'cpu'}), shared 2-core VM",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.baseline:
        base_grants = results["baseline"].grants
        out["baseline"] = {
            "git_revision": subprocess.run(  # HEAD moves: record the commit
                ["git", "rev-parse", "--short", args.baseline],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip(),
            **summary(times["baseline"], cpu["baseline"]),
            "runs_admitted": sum(1 for g in base_grants.values() if g.admitted),
            "grants_differing_from_current": sum(
                1 for k, g in base_grants.items() if g.workers != plain.grants[k].workers
            ),
        }
        if "baseline_quotas_100ns" in results:
            out["baseline"]["quotas_100_namespaces"] = summary(
                times["baseline_quotas_100ns"], cpu["baseline_quotas_100ns"]
            )
            # a revision before quotas decides on other inputs: there is nothing to compare
            differ = compare(
                base,
                results["baseline"],
                plain,
                results["baseline_quotas_100ns"],
                quota,
                args.check,
            )
            out["baseline"]["random_workloads_compared"] = args.check
            out["baseline"]["decisions_identical"] = not differ
            if differ and not args.allow_changes:
                print(f"decisions differ from {args.baseline} on: {', '.join(differ[:10])}")
                return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
