"""Helpers shared by the benchmarks: a private local cluster and result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


@contextmanager
def private_cluster(**overrides: Any) -> Iterator[Cluster]:
    """A throwaway cluster on free ports in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="accordion-bench-") as tmp:
        cfg = ClusterConfig(
            state_dir=Path(tmp), base_port=free_port_block(first=23400), kwok_nodes=0
        )
        for key, value in overrides.items():
            setattr(cfg, key, value)
        c = Cluster(cfg)
        c.up()
        try:
            yield c
        finally:
            c.down()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "unknown",
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": len(
            [
                ln
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("processor")
            ]
        ),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "commit": rev,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2) + "\n")
    print(f"[bench] wrote {path}")
    return path


def start_operator(
    cluster: Cluster, log: Path, settings: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m accordion_operator` against `cluster` with default settings (and `settings`,
    ACCORDION_* variables), its health and metrics ports right after the cluster's own."""
    ports = free_port_block(first=cluster.config.base_port + 9, size=2)
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "ACCORDION_HEALTH_PORT": str(ports),
        "ACCORDION_OPERATOR_METRICS_PORT": str(ports + 1),
        # the runs name a fake endpoint (minio.local:9000): the preflight would only add a
        # failing name lookup per namespace to what is measured
        "ACCORDION_STORAGE_PREFLIGHT": "false",
        **(settings or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "accordion_operator"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def prepare_namespaces(cluster: Cluster, namespaces: list[str]) -> None:
    """The CRDs installed, and each namespace created with its default ServiceAccount and the
    credentials Secret `s3` the runs of `run_body` name."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/trainingruns.accordion.dev"
    )
    secret = {"metadata": {"name": "s3"}, "stringData": {"accessKey": "a", "secretKey": "b"}}
    with cluster.http() as http:
        for ns in namespaces:
            http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).raise_for_status()
            deadline = time.monotonic() + 30
            while http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no default service account in {ns}")
                time.sleep(0.2)
            http.post(f"/api/v1/namespaces/{ns}/secrets", json=secret).raise_for_status()
