"""A stand-in for NVIDIA's dcgm-exporter serving RECORDED SAMPLE DATA (there is no GPU here).

The series are replayed from `tests/data/dcgm/sample-trace.csv` (illustrative values, not a
measurement; see its header). Everything else is real: the pods are the run's real worker pods,
read from the apiserver at each scrape, on the real (process) nodes that hold their simulated
GPU, and the scrape goes through the local cluster's real Prometheus.

Shape, as dcgm-exporter exposes it with its Kubernetes pod mapping: one series per GPU per
field, labelled `gpu`, `UUID`, `device`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION` and,
while a pod holds the GPU, the pod's `namespace`, `pod` and `container`. The scrape target
carries the exporter's own `namespace`/`pod`/`container` (as a ServiceMonitor scrape of the
GPU Operator's exporter does), so Prometheus renames the GPU's pod labels to
`exported_namespace`/`exported_pod`/`exported_container`: the relabelling the dashboards and
alerts must undo. The target is labelled `job="dcgm-exporter-sample"` and
`sample_data="recorded"`, so nobody mistakes these series for a measurement.
"""

from __future__ import annotations

import csv
import datetime
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from accordion_dev.cluster import GPU, Cluster

PROCESS_NODE = "accordion.dev/process-node"
TRACE = Path(__file__).resolve().parents[1] / "data" / "dcgm" / "sample-trace.csv"
#: the labels the scrape target adds: the exporter's own pod, as the GPU Operator deploys it
TARGET_LABELS = {
    "job": "dcgm-exporter-sample",
    "sample_data": "recorded",
    "namespace": "gpu-operator",
    "pod": "nvidia-dcgm-exporter-sample",
    "container": "nvidia-dcgm-exporter",
}
LABELS = [
    "gpu",
    "UUID",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
    "namespace",
    "pod",
    "container",
]


def load_trace(path: Path = TRACE) -> tuple[list[tuple[float, float]], int]:
    """[(gpu_util %, fb_used MiB)] per second since the pod started, and the row to loop from."""
    rows: list[tuple[float, float]] = []
    loop_from = 0
    with path.open() as f:
        for rec in csv.reader(line for line in f if not line.startswith("#")):
            if rec[0] == "loop_from":
                loop_from = int(rec[1])
            elif rec[0] != "seconds":
                assert int(rec[0]) == len(rows), "one row per second, in order"
                rows.append((float(rec[1]), float(rec[2])))
    return rows, loop_from


def _started(pod: dict[str, Any]) -> float:
    text = (pod.get("status") or {}).get("startTime")
    if not text:
        return time.time()
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class SampleDcgmCollector(Collector):
    """Per GPU of every node: the recorded trace at the age of the pod that holds it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.trace, self.loop_from = load_trace()
        self.pods_seen: set[tuple[str, str]] = set()

    def _sample(self, age: float) -> tuple[float, float]:
        i = max(0, int(age))
        if i >= len(self.trace):
            period = len(self.trace) - self.loop_from
            i = self.loop_from + (i - self.loop_from) % period
        return self.trace[i]

    def gpus(self) -> list[tuple[dict[str, str], tuple[float, float]]]:
        """(labels, (util, fb)) of every GPU of every node, with its pod if one holds it."""
        with self.cluster.http(timeout=5) as http:
            nodes = http.get("/api/v1/nodes").json().get("items", [])
            pods = http.get(
                "/api/v1/pods", params={"fieldSelector": "status.phase=Running"}
            ).json()["items"]
        by_node: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            requests = [
                ((c.get("resources") or {}).get("requests") or {}).get(GPU)
                for c in pod["spec"]["containers"]
            ]
            if any(r and int(r) > 0 for r in requests) and pod["spec"].get("nodeName"):
                by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
        out = []
        now = time.time()
        for node in nodes:
            name = node["metadata"]["name"]
            if (node["metadata"].get("labels") or {}).get(PROCESS_NODE) != "true":
                continue  # simulated (kwok) nodes run nothing: no exporter there
            count = int(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0))
            holders = sorted(by_node.get(name, []), key=lambda p: p["metadata"]["name"])
            for i in range(count):
                labels = {
                    "gpu": str(i),
                    "UUID": f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}/{i}')}",
                    "device": f"nvidia{i}",
                    "modelName": "NVIDIA H100 80GB HBM3",
                    "Hostname": name,
                    "DCGM_FI_DRIVER_VERSION": "550.127.08",
                    "namespace": "",
                    "pod": "",
                    "container": "",
                }
                value = (0.0, 0.0)
                if i < len(holders):
                    pod = holders[i]
                    meta = pod["metadata"]
                    labels.update(
                        namespace=meta["namespace"],
                        pod=meta["name"],
                        container=pod["spec"]["containers"][0]["name"],
                    )
                    self.pods_seen.add((meta["namespace"], meta["name"]))
                    value = self._sample(now - _started(pod))
                out.append((labels, value))
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=LABELS)
        fb = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=LABELS
        )
        try:
            gpus = self.gpus()
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            gpus = []  # the cluster is not up (yet): an exporter with no GPUs
        for labels, (u, m) in gpus:
            values = [labels[k] for k in LABELS]
            util.add_metric(values, u)
            fb.add_metric(values, m)
        yield util
        yield fb


class SampleDcgmExporter:
    """Serves the collector on 127.0.0.1 and registers it with the cluster's Prometheus."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.collector = SampleDcgmCollector(cluster)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        cluster.add_scrape_target("dcgm-exporter-sample", self.address, TARGET_LABELS)

    def close(self) -> None:
        self.cluster.remove_scrape_target("dcgm-exporter-sample")
        self.server.shutdown()
        self.thread.join(5)
