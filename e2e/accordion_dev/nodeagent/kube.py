"""A small synchronous apiserver client over httpx: kubeconfig, CRUD, watch.

The agent needs a handful of verbs on pods, nodes, leases, secrets and configmaps; a full client
library would be more code to load than this module.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

Obj = dict[str, Any]


class KubeError(RuntimeError):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status


@dataclass(frozen=True)
class Kubeconfig:
    server: str
    ca: str | None
    cert: tuple[str, str] | None
    token: str | None

    @property
    def port(self) -> int:
        return httpx.URL(self.server).port or 443


def load_kubeconfig(path: Path) -> Kubeconfig:
    """The current context's server and credentials; inline `*-data` goes to temp files."""
    cfg = yaml.safe_load(path.read_text())
    ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])

    def file_of(d: Obj, key: str) -> str | None:
        if key in d:
            p = Path(d[key])
            return str(p if p.is_absolute() else path.parent / p)
        if f"{key}-data" in d:
            f = tempfile.NamedTemporaryFile(prefix="kubeconfig-", delete=False)  # noqa: SIM115
            f.write(base64.b64decode(d[f"{key}-data"]))
            f.close()
            return f.name
        return None

    cert, key = file_of(user, "client-certificate"), file_of(user, "client-key")
    return Kubeconfig(
        server=cluster["server"],
        ca=file_of(cluster, "certificate-authority"),
        cert=(cert, key) if cert and key else None,
        token=user.get("token"),
    )


def ssl_context(kc: Kubeconfig) -> ssl.SSLContext:
    """httpx 0.28 ignores `cert=` when `verify` is a path (the request goes out anonymous):
    build the context ourselves."""
    ctx = ssl.create_default_context(cafile=kc.ca)
    if not kc.ca:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if kc.cert:
        ctx.load_cert_chain(*kc.cert)
    return ctx


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """MicroTime, as Lease.spec.renewTime wants it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """One httpx client per thread that uses it (httpx clients are not shared across threads)."""

    def __init__(self, kc: Kubeconfig, timeout: float = 15.0) -> None:
        self.kc = kc
        headers = {"Authorization": f"Bearer {kc.token}"} if kc.token else {}
        self.http = httpx.Client(
            base_url=kc.server, verify=ssl_context(kc), headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def _check(self, r: httpx.Response) -> Obj:
        if r.status_code >= 300:
            raise KubeError(r.status_code, r.text)
        out: Obj = r.json() if r.content else {}
        return out

    def get(self, path: str, **params: Any) -> Obj:
        return self._check(self.http.get(path, params=params))

    def get_or_none(self, path: str) -> Obj | None:
        r = self.http.get(path)
        if r.status_code == 404:
            return None
        return self._check(r)

    def post(self, path: str, body: Obj) -> Obj:
        return self._check(self.http.post(path, json=body))

    def put(self, path: str, body: Obj) -> Obj:
        return self._check(self.http.put(path, json=body))

    def patch(self, path: str, body: Obj, kind: str = "strategic-merge-patch") -> Obj:
        return self._check(
            self.http.patch(
                path,
                content=json.dumps(body),
                headers={"Content-Type": f"application/{kind}+json"},
            )
        )

    def delete(self, path: str, body: Obj | None = None) -> Obj | None:
        r = self.http.request("DELETE", path, json=body)
        if r.status_code in (404, 409):  # gone already, or the uid precondition says: not ours
            return None
        return self._check(r)

    def watch(self, path: str, resource_version: str, **params: Any) -> Iterator[Obj]:
        """Events (type, object) until the server ends the watch; bookmarks included."""
        q = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "290",
            **params,
        }
        # Read timeout above the server's own timeout: a dead apiserver ends the loop, a quiet
        # one does not.
        timeout = httpx.Timeout(10.0, read=320.0)
        with self.http.stream("GET", path, params=q, timeout=timeout) as r:
            if r.status_code >= 300:
                raise KubeError(r.status_code, r.read().decode(errors="replace"))
            for line in r.iter_lines():
                if line.strip():
                    yield json.loads(line)
