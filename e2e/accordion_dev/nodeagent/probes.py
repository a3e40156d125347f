"""Readiness and liveness probes: exec, tcpSocket, httpGet (run on a worker thread)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from accordion_dev.nodeagent.images import Identity
from accordion_dev.nodeagent.runtime import exec_in


@dataclass
class ProbeState:
    """Thresholds of one probe of one container instance."""

    spec: Mapping[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # None until the thresholds have decided once

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, ok: bool) -> None:
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.result = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.result = False


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"container has no port named {port!r}")


def run_probe(
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    pid: int,
    env: Mapping[str, str],
    isolate: bool,
    identity: Identity | None = None,
) -> bool:
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "exec" in spec:
            return exec_in(pid, spec["exec"]["command"], env, timeout, isolate, identity) == 0
        if "tcpSocket" in spec:
            port = resolve_port(spec["tcpSocket"]["port"], container)
            host = spec["tcpSocket"].get("host") or pod_ip
            with socket.create_connection((host, port), timeout=timeout):
                return True
        if "httpGet" in spec:
            g = spec["httpGet"]
            port = resolve_port(g["port"], container)
            scheme = g.get("scheme", "HTTP").lower()
            headers = {h["name"]: h["value"] for h in g.get("httpHeaders") or []}
            url = f"{scheme}://{g.get('host') or pod_ip}:{port}{g.get('path', '/')}"
            r = httpx.get(url, headers=headers, timeout=timeout, verify=False)  # noqa: S501
            return 200 <= r.status_code < 400
    except (OSError, ValueError, httpx.HTTPError):
        return False
    return False
