"""Pod discovery for the local Prometheus (what `kubernetes_sd_configs: role: pod` does).

Debian's Prometheus package is built without Kubernetes service discovery, so this process
watches pods (LIST, then WATCH, like kubernetes_sd) and writes the Running ones that declare a
container port named `metrics` as file_sd target groups with the labels a real cluster's
relabelling gives: `namespace`, `pod`, `run` (from `accordion.dev/run`) and `experiment`.
A watch rather than a LIST every second: at 10,000 pods that LIST was the apiserver's busiest
client in the scale benchmarks.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from accordion_dev.cluster import Cluster, ClusterConfig


def has_metrics_port(pod: dict[str, Any]) -> bool:
    return any(
        port.get("name") == "metrics"
        for c in (pod.get("spec") or {}).get("containers") or []
        for port in c.get("ports") or []
    )


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
    ap = argparse.ArgumentParser(prog="python -m accordion_dev.pod_discovery")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--base-port", type=int, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    cluster = Cluster(ClusterConfig(state_dir=Path(args.state_dir), base_port=args.base_port))
    out = cluster.prometheus_targets_dir / "pods.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    view = PodView()
    threading.Thread(target=view.follow, args=(cluster, args.interval), daemon=True).start()
    # At most one file per interval: Prometheus re-reads file_sd on every change, and a burst
    # of pods would otherwise rewrite it per event.
    last: list[dict[str, Any]] | None = None
    while True:
        time.sleep(args.interval)
        groups = targets(view.snapshot())
        if groups != last:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(out)
            last = groups


class PodView:
    """The pods with a metrics port, kept current by LIST+WATCH in a thread."""

    def __init__(self) -> None:
        self._pods: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._pods.values())

    def follow(self, cluster: Cluster, retry: float) -> None:
        while True:
            try:
                self.list_watch(cluster)
            except (httpx.HTTPError, OSError, ValueError) as e:
                print(f"pod discovery: {e}", flush=True)  # the apiserver may be restarting
                time.sleep(retry)

    def list_watch(self, cluster: Cluster) -> None:
        """LIST, then WATCH until the watch ends. Pods without a metrics port are never kept."""
        with cluster.http(timeout=10) as http:
            listing = http.get("/api/v1/pods", params={"resourceVersion": "0"})
            listing.raise_for_status()
            body = listing.json()
            with self._lock:
                self._pods = {
                    p["metadata"]["uid"]: p for p in body.get("items") or [] if has_metrics_port(p)
                }
            params = {
                "watch": "true",
                "resourceVersion": body["metadata"]["resourceVersion"],
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "300",
            }
            with http.stream(
                "GET", "/api/v1/pods", params=params, timeout=httpx.Timeout(10, read=None)
            ) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if line:
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            return  # e.g. 410 Gone: LIST again
                        self.apply(event)

    def apply(self, event: dict[str, Any]) -> None:
        pod = event.get("object") or {}
        if event.get("type") == "BOOKMARK" or not has_metrics_port(pod):
            return
        with self._lock:
            if event["type"] == "DELETED":
                self._pods.pop(pod["metadata"]["uid"], None)
            else:
                self._pods[pod["metadata"]["uid"]] = pod


if __name__ == "__main__":
    main()
