"""Time from a trial run finishing to the Experiment's next run being created (issue 6).

    .venv/bin/python -m benchmarks.experiment_latency [--runs 12]

A local cluster (kwok GPU nodes, no Prometheus), the CRDs, the real operator process with its
default settings, and one random-search Experiment with parallelism 1. The benchmark plays the
trainer and the kubelet for each trial, as tests/cluster/test_experiment_operator.py does: once
the trial's launcher pod runs, it writes the epochs into `status.training` (as the launcher
does) and marks the launcher pod Succeeded (exit 0). The clock runs from that pod status write
to the next trial's TrainingRun appearing: the run controller sees the pod end and marks the run
Succeeded, the Experiment controller sees that through its trial watch, rebuilds the study,
asks Optuna, and creates the next run. Writes benchmarks/results/experiment_latency.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import experiment_body, finish_run
from benchmarks._common import start_operator

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "experiment_latency.json"
NS = "bench"
GROUP = "/apis/accordion.dev/v1alpha1/namespaces/bench"


def finish(cluster: Cluster, run: str, value: float) -> None:
    with cluster.http() as http:
        finish_run(http, NS, run, [value - 0.2, value - 0.1, value], timeout=60, every=0.05)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="accordion-bench-exp-"))
    base = free_port_block(first=23400)
    cluster = Cluster(ClusterConfig(state_dir=state, base_port=base, monitoring=False))
    cluster.up(log=lambda line: print(line, flush=True))
    op: subprocess.Popen[bytes] | None = None
    latencies: list[float] = []
    try:
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        with cluster.http() as http:
            http.post("/api/v1/namespaces", json={"metadata": {"name": NS}}).raise_for_status()
            poll(
                lambda: (
                    http.get(f"/api/v1/namespaces/{NS}/serviceaccounts/default").status_code == 200
                ),
                30,
                "the default service account",
            )
            http.post(
                f"/api/v1/namespaces/{NS}/secrets",
                json={
                    "metadata": {"name": "s3"},
                    "stringData": {"accessKey": "a", "secretKey": "b"},
                },
            ).raise_for_status()
        op = start_operator(cluster, state / "operator.log")
        with cluster.http() as http:
            http.post(
                f"{GROUP}/experiments",
                json=experiment_body("lr", seed=7, maxRuns=args.runs, parallelism=1),
            ).raise_for_status()

            def exists(run: str) -> bool:
                return http.get(f"{GROUP}/trainingruns/{run}").status_code == 200

            poll(lambda: exists("lr-000"), 60, "the first trial")
            for i in range(args.runs - 1):
                finish(cluster, f"lr-{i:03d}", 0.5 + 0.03 * i)
                t0 = time.monotonic()
                poll(functools.partial(exists, f"lr-{i + 1:03d}"), 30, f"trial {i + 1}", every=0.01)
                latencies.append(round(time.monotonic() - t0, 3))
                print(
                    f"[bench] lr-{i:03d} done -> lr-{i + 1:03d} created: {latencies[-1]:.3f} s",
                    flush=True,
                )
    finally:
        if op is not None:
            op.terminate()
            op.wait(30)
        cluster.down(purge=True)
    result = {
        "benchmark": "experiment_latency",
        "what": "trial launcher pod Succeeded -> next trial TrainingRun exists (parallelism 1)",
        "samples": len(latencies),
        "seconds": latencies,
        "median_seconds": round(statistics.median(latencies), 3),
        "max_seconds": max(latencies),
        "operator_settings": "defaults (debounce 0.2 s)",
        "machine": "shared 2-core VM",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
