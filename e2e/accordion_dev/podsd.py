"""Pod discovery for the local Prometheus (what `kubernetes_sd_configs: role: pod` does).

Debian's Prometheus package is built without Kubernetes service discovery, so this process lists
Running pods that declare a container port named `metrics` every second and writes them as a
file_sd target group with the labels a real cluster's relabelling gives: `namespace`, `pod`,
`run` (from `accordion.dev/run`) and `experiment`.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from accordion_dev.cluster import Cluster, ClusterConfig


def targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd groups for Running pods with a `metrics` container port (pure)."""
    groups = []
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if pod.get("status", {}).get("phase") != "Running" or not ip:
            continue
        meta = pod["metadata"]
        labels = meta.get("labels", {})
        for c in pod["spec"]["containers"]:
            for port in c.get("ports", []):
                if port.get("name") != "metrics":
                    continue
                group_labels = {
                    "namespace": meta["namespace"],
                    "pod": meta["name"],
                    "container": c["name"],
                }
                for key, label in (
                    ("accordion.dev/run", "run"),
                    ("accordion.dev/experiment", "experiment"),
                ):
                    if key in labels:
                        group_labels[label] = labels[key]
                groups.append(
                    {"targets": [f"{ip}:{port['containerPort']}"], "labels": group_labels}
                )
    return sorted(groups, key=lambda g: g["targets"][0])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m accordion_dev.podsd")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--base-port", type=int, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    cluster = Cluster(ClusterConfig(state_dir=Path(args.state_dir), base_port=args.base_port))
    out = cluster.prometheus_targets_dir / "pods.json"
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    last = None
    while not stop:
        try:
            with cluster.http(timeout=10) as http:
                pods = http.get("/api/v1/pods").json().get("items", [])
            groups = targets(pods)
            if groups != last:
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(groups))
                tmp.replace(out)
                last = groups
        except (httpx.HTTPError, OSError, ValueError) as e:
            print(f"pod discovery: {e}", flush=True)  # the apiserver may be restarting
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
