"""The launcher's apiserver calls, over the pod's service account (stdlib only: the trainer
image carries no Kubernetes client).

- list and watch this run's worker pods (host discovery);
- merge-patch `status.training` of the TrainingRun (progress reports).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_VERSION = "accordion.dev/v1alpha1"


@dataclass(frozen=True)
class ApiClient:
    server: str
    token_file: Path | None
    ca_file: Path | None
    timeout_s: float = 5.0

    @classmethod
    def in_cluster(cls, env: dict[str, str] | None = None) -> ApiClient:
        """Service-account config; `ACCORDION_KUBE_API`/`ACCORDION_SA_DIR` override it (tests)."""
        env = dict(os.environ) if env is None else env
        sa = Path(env.get("ACCORDION_SA_DIR", str(SA_DIR)))
        server = env.get("ACCORDION_KUBE_API") or (
            f"https://{env['KUBERNETES_SERVICE_HOST']}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"
            if env.get("KUBERNETES_SERVICE_HOST")
            else ""
        )
        if not server:
            raise RuntimeError("not in a cluster: no KUBERNETES_SERVICE_HOST / ACCORDION_KUBE_API")
        token = sa / "token"
        ca = sa / "ca.crt"
        return cls(
            server.rstrip("/"), token if token.exists() else None, ca if ca.exists() else None
        )

    def _request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        with self._open(method, path, body, content_type, self.timeout_s) as resp:
            return json.loads(resp.read() or b"null")

    def _open(self, method: str, path: str, body: Any, content_type: str, timeout_s: float) -> Any:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            # Re-read each time: bound service-account tokens rotate.
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        # The server URL comes from the pod's own environment (https://KUBERNETES_SERVICE_HOST).
        req = urllib.request.Request(  # noqa: S310
            self.server + path, data=data, method=method, headers=headers
        )
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        return urllib.request.urlopen(req, timeout=timeout_s, context=ctx)  # noqa: S310

    def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        q = urllib.parse.urlencode({"labelSelector": selector})
        result: dict[str, Any] = self._request("GET", f"/api/v1/namespaces/{namespace}/pods?{q}")
        return result

    def watch_pods(self, namespace: str, selector: str, timeout_s: int) -> Iterator[str]:
        """The type of each change to the selected pods (ADDED, MODIFIED, DELETED, ...), as the
        apiserver sends it, until it ends the watch after `timeout_s`."""
        q = urllib.parse.urlencode(
            {"labelSelector": selector, "watch": "1", "timeoutSeconds": str(timeout_s)}
        )
        path = f"/api/v1/namespaces/{namespace}/pods?{q}"
        with self._open("GET", path, None, "", timeout_s + self.timeout_s) as resp:
            for line in resp:
                if line.strip():
                    yield str(json.loads(line).get("type", ""))

    def patch_run_status(self, namespace: str, run: str, status: dict[str, Any]) -> None:
        self._request(
            "PATCH",
            f"/apis/{GROUP_VERSION}/namespaces/{namespace}/trainingruns/{run}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )


def worker_selector(run: str) -> str:
    """The run's Horovod hosts: its worker pods, and its launcher when that hosts worker 0 (the
    only launcher with a worker index)."""
    return f"accordion.dev/run={run},accordion.dev/worker-index"


def controlled_by(meta: dict[str, Any], uid: str) -> bool:
    """Whether the object's controller ownerReference is `uid`."""
    refs = meta.get("ownerReferences") or []
    return any(r.get("controller") is True and r.get("uid") == uid for r in refs)


def ready_worker_ips(
    pod_list: dict[str, Any],
    owner_uid: str | None = None,
    serving: Callable[[str], bool] | None = None,
) -> list[str]:
    """Pod IPs of Ready, not-terminating worker pods, in worker-index order (pure), so that
    before rank 0 is published the lowest index holds it (and a shrink, which removes the
    highest index first, never hits it). With `owner_uid` (the run's uid), only pods the run
    controls: the labels alone can be copied onto any pod in the namespace, and horovodrun
    would then ssh into it. With `serving`, a Running pod that is not Ready yet counts when
    `serving(ip)` says its SSH port already accepts connections: what its readiness probe
    checks, without waiting up to a probe period (1 s) and a status update for it."""
    return [
        ip for ip, ready in _worker_ips(pod_list, owner_uid) if ready or (serving and serving(ip))
    ]


def starting_worker_ips(pod_list: dict[str, Any], owner_uid: str | None = None) -> list[str]:
    """Pod IPs of Running, not-terminating worker pods that are not Ready yet (pure)."""
    return [ip for ip, ready in _worker_ips(pod_list, owner_uid) if not ready]


def _worker_ips(pod_list: dict[str, Any], owner_uid: str | None) -> list[tuple[str, bool]]:
    """(IP, Ready) of the Running, not-terminating worker pods, in worker-index order."""
    out: list[tuple[int, str, str, bool]] = []
    for pod in pod_list.get("items") or []:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        if owner_uid is not None and not controlled_by(meta, owner_uid):
            continue
        ip = status.get("podIP")
        if not ip:
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        labels = meta.get("labels") or {}
        try:
            index = int(labels.get("accordion.dev/worker-index", "0"))
        except ValueError:
            index = 0
        out.append((index, str(meta.get("name", "")), str(ip), ready))
    return [(ip, ready) for _, _, ip, ready in sorted(out)]
