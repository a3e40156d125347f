"""The TrainingRun controller's memory and pass time at scale, in process, apiserver faked.

    .venv/bin/python -m benchmarks.operator_memory [--runs 10000] [--nodes 1000] [--history 50]

A replay of what operator_scale measures through a real cluster, without the cluster, so that a
memory change can be judged in a minute: M nodes of 8 GPUs and N one-worker runs go into the
controller's cache as watch events would bring them, then four controller passes run against a
fake Kube that answers every create and status patch (and keeps nothing; the pods it creates are
bound, Running and Ready at once, so the fourth pass is the idle pass over settled runs that the
operator makes every ACCORDION_RESYNC_SECONDS at rest). Reported: VmRSS after
the imports, after caching the runs and after each pass, peak VmHWM, the pass timings, and the
largest live allocations (tracemalloc, a second, smaller replay: tracing slows and grows the
process). `--history E` gives each run E epochs of `status.training.history`, as real runs carry.
Writes benchmarks/results/operator_memory[-<runs>x<nodes>[-h<E>]].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from accordion_operator.config import Config
from accordion_operator.core.objects import Resource
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller

OUT_DIR = Path(__file__).resolve().parent / "results"


def vm(key: str) -> int:
    text = Path(f"/proc/{os.getpid()}/status").read_text()
    m = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(m.group(1)) // 1024 if m else -1


class Replay:
    def __init__(self, runs: int, nodes: int, history: int) -> None:
        self.runs, self.nodes, self.history = runs, nodes, history
        self.rv = 100
        self.pods = 0
        self.snapshot: tracemalloc.Snapshot | None = None

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def run_body(self, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {
                "name": f"r{i:05d}",
                "namespace": f"bench-{i % 10}",
                "uid": f"uid-{i}",
                "resourceVersion": self.next_rv(),
                "generation": 1,
                "creationTimestamp": "2026-11-22T06:00:00Z",
            },
            "spec": {
                "model": {"builtin": "mnist-cnn"},
                "results": {
                    "endpoint": "minio.local:9000",
                    "bucket": "results",
                    "credentialsSecret": {"name": "s3"},
                },
                "workers": {"min": 1, "max": 1, "gpusPerWorker": 1},
                "tolerations": [{"operator": "Exists"}],
            },
        }
        if self.history:
            metrics = {"loss": 0.1, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.88}
            body["status"] = {
                "training": {
                    "epoch": self.history,
                    "metrics": metrics,
                    "history": [
                        {"epoch": e, "metrics": dict(metrics)} for e in range(1, self.history + 1)
                    ],
                }
            }
        return body

    # the fake Kube: answers, keeps nothing
    async def secret_keys(self, namespace: str, name: str) -> tuple[frozenset[str], str]:
        return frozenset({"accessKey", "secretKey"}), "1"

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = {**obj["metadata"], "resourceVersion": self.next_rv(), "uid": self.next_rv()}
        if obj["kind"] == "Pod":  # bound, Running and Ready at once, as kwok makes them
            self.pods += 1
            spec = {**obj["spec"], "nodeName": f"n{self.pods % self.nodes}"}
            ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            return 201, {**obj, "metadata": meta, "spec": spec, "status": ready}
        return 201, {**obj, "metadata": meta}

    async def delete_pod(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        return 200, {"kind": "Status"}

    async def patch_status(
        self, _resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        body = self.run_body(int(name[1:]))
        body["status"] = {
            **body.get("status", {}),
            **{k: v for k, v in patch.items() if v is not None},
        }
        return 200, body

    async def event(self, *_: Any) -> None:
        return None

    async def replay(self, report: dict[str, Any]) -> None:
        cfg = Config()
        cache = ClusterCache(cfg)
        for j in range(self.nodes):
            cache.apply(
                "node",
                "ADDED",
                {
                    "metadata": {"name": f"n{j}"},
                    "spec": {
                        "taints": [
                            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
                        ]
                    },
                    "status": {
                        "allocatable": {"nvidia.com/gpu": "8"},
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                },
            )
        report["rss_mb_imports_and_nodes"] = vm("VmRSS")
        for i in range(self.runs):
            cache.apply("run", "ADDED", self.run_body(i))
        report["rss_mb_runs_cached"] = vm("VmRSS")
        ctl = Controller(cfg, self, cache, metrics=OperatorMetrics())  # type: ignore[arg-type]
        passes = []
        for _ in range(4):
            t = time.perf_counter()
            await ctl.reconcile_all()
            s = ctl.last
            passes.append(
                {
                    "seconds": round(time.perf_counter() - t, 2),
                    "decide_seconds": round(s.decide_seconds, 2),
                    "act_seconds": round(s.act_seconds, 2),
                    "admitted": s.admitted,
                    "acted": s.actions,
                    "rss_mb": vm("VmRSS"),
                }
            )
        report["passes"] = passes
        report["peak_rss_mb"] = vm("VmHWM")
        if tracemalloc.is_tracing():
            self.snapshot = tracemalloc.take_snapshot()  # while the cache is still alive


def top_allocations(runs: int, nodes: int, history: int) -> list[dict[str, Any]]:
    """The largest live allocations after the passes, by the innermost operator line."""
    tracemalloc.start(8)
    replay = Replay(runs, nodes, history)
    asyncio.run(replay.replay({}))
    tracemalloc.stop()
    snap = replay.snapshot
    assert snap is not None
    sizes: dict[str, int] = {}
    for stat in snap.statistics("traceback"):
        ours = [
            f"{Path(f.filename).name}:{f.lineno}"
            for f in stat.traceback
            if "accordion_operator" in f.filename
        ]
        where = ours[-1] if ours else "other"
        sizes[where] = sizes.get(where, 0) + stat.size
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:10]
    return [{"where": k, "mb": round(v / 2**20, 1)} for k, v in top]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=1_000)
    ap.add_argument("--history", type=int, default=0)
    args = ap.parse_args()
    report: dict[str, Any] = {
        "benchmark": "operator_memory",
        "runs": args.runs,
        "nodes": args.nodes,
        "history_epochs": args.history,
    }
    asyncio.run(Replay(args.runs, args.nodes, args.history).replay(report))
    small = max(1, args.runs // 5)
    report[f"top_live_allocations_at_{small}_runs"] = top_allocations(
        small, max(1, args.nodes // 5), args.history
    )
    report["python"] = sys.version.split()[0]
    report["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    name = f"operator_memory-{args.runs}x{args.nodes}" + (
        f"-h{args.history}" if args.history else ""
    )
    if (args.runs, args.nodes, args.history) == (10_000, 1_000, 0):
        name = "operator_memory"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
