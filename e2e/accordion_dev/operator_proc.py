"""The operator as a local subprocess (`python -m accordion_operator`, cluster-wide) against a
local cluster: what the operator cluster tests and the operator benchmarks start, kill and
restart. The demo runs its operator through the cluster's process table instead (it outlives
the demo command)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from accordion_dev.cluster import REPO, Cluster
from accordion_dev.polling import poll

#: the chart's copy of the operator's launcher admission policy (helm/generate_chart_files.py)
LAUNCHER_POLICY = REPO / "helm" / "accordion" / "files" / "launcher-policy.json"

#: the clusters (state dirs) this process already gave the launcher admission policy
_POLICY_INSTALLED: set[Path] = set()


def install_launcher_policy(cluster: Cluster) -> None:
    """What the chart installs beside the operator and the operator cannot create itself (a
    cluster-scoped admission policy): each launcher may write its own run's status only."""
    if cluster.state_dir in _POLICY_INSTALLED:
        return
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(LAUNCHER_POLICY))
    _POLICY_INSTALLED.add(cluster.state_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """One operator process at a time, restartable. Its environment is `base_env` (this
    process's own by default), then the cluster and port settings, then `env`; each start logs
    to `<log_dir>/<name>-<n>.log`."""

    def __init__(
        self,
        cluster: Cluster,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "operator",
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.name = name
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0
        self.health_port = free_port()
        self.metrics_port = free_port()

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self, wait: bool = True) -> None:
        """Starts the process; with `wait`, returns once /healthz answers."""
        assert self.proc is None
        install_launcher_policy(self.cluster)
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **self.base_env,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "ACCORDION_HEALTH_PORT": str(self.health_port),
            "ACCORDION_OPERATOR_METRICS_PORT": str(self.metrics_port),
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "accordion_operator"],
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.started_at = time.monotonic()
        if wait:
            poll(self.healthy, 60, what=f"{self.name} /healthz", every=0.1)

    def healthy(self) -> bool:
        """Whether /healthz answers 200; raises if the process has exited."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.tail()}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics_text(self) -> str | None:
        """Its /metrics page, or None while it does not answer."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL: no cleanup at all, the way a crash or an OOM kill ends it (a Lease it
        holds is not released). Returns the moment the signal was sent."""
        assert self.proc is not None
        at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        return at

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""
