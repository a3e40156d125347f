"""The launcher's two apiserver calls, over the pod's service account (stdlib only: the trainer
image carries no Kubernetes client).

- list this run's worker pods (host discovery);
- merge-patch `status.training` of the TrainingRun (progress reports).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.parse
import urllib.request
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
        with urllib.request.urlopen(req, timeout=self.timeout_s, context=ctx) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")

    def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        q = urllib.parse.urlencode({"labelSelector": selector})
        result: dict[str, Any] = self._request("GET", f"/api/v1/namespaces/{namespace}/pods?{q}")
        return result

    def patch_run_status(self, namespace: str, run: str, status: dict[str, Any]) -> None:
        self._request(
            "PATCH",
            f"/apis/{GROUP_VERSION}/namespaces/{namespace}/trainingruns/{run}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )


def worker_selector(run: str) -> str:
    return f"accordion.dev/run={run},accordion.dev/role=worker"


def controlled_by(meta: dict[str, Any], uid: str) -> bool:
    """Whether the object's controller ownerReference is `uid`."""
    refs = meta.get("ownerReferences") or []
    return any(r.get("controller") is True and r.get("uid") == uid for r in refs)


def ready_worker_ips(pod_list: dict[str, Any], owner_uid: str | None = None) -> list[str]:
    """Pod IPs of Ready, not-terminating worker pods, in worker-index order (pure), so that
    before rank 0 is published the lowest index holds it (and a shrink, which removes the
    highest index first, never hits it). With `owner_uid` (the run's uid), only pods the run
    controls: the labels alone can be copied onto any pod in the namespace, and horovodrun
    would then ssh into it."""
    out: list[tuple[int, str, str]] = []
    for pod in pod_list.get("items") or []:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        if owner_uid is not None and not controlled_by(meta, owner_uid):
            continue
        ip = status.get("podIP")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if not ip or not ready:
            continue
        labels = meta.get("labels") or {}
        try:
            index = int(labels.get("accordion.dev/worker-index", "0"))
        except ValueError:
            index = 0
        out.append((index, str(meta.get("name", "")), str(ip)))
    return [ip for _, _, ip in sorted(out)]
