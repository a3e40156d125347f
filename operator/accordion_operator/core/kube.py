"""The operator's only door to the apiserver: one connection pool, LIST+WATCH, and the writes.

Reads reach the controllers through caches fed by `Kube.list_watch` (plain streaming watches,
not kopf's per-object machinery: see there); writes are plain REST calls whose responses the
callers put back into their caches at once, so that the next pass never acts on a view older
than its own writes. Both kinds (TrainingRun, Experiment) use this one client.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import kr8s.asyncio
import orjson

from accordion_operator.config import Config
from accordion_operator.core.events import event_body, repeat_patch
from accordion_operator.core.objects import EVENTS, Resource, plural_of
from accordion_operator.metrics import OperatorMetrics

log = logging.getLogger("accordion.kube")
MERGE_PATCH = "application/merge-patch+json"
#: how often a throttled (429) request is retried before its caller sees the 429
THROTTLE_RETRIES = 4
THROTTLE_MAX_WAIT_S = 10.0


def relist_delay(failures: int) -> float:
    """Seconds before the next LIST after `failures` failed ones in a row: 1 s at first (an
    apiserver restart is over quickly), doubling to 30 s (a CRD that is not installed is not
    asked for, and logged, every second)."""
    return float(min(2 ** (failures - 1), 30))


class ApiError(RuntimeError):
    """An apiserver answer the caller cannot act on."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def transient(self) -> bool:
        # 429: throttled, or a CRD's storage still initialising right after install;
        # 404: the CRD not installed yet; 5xx: apiserver trouble
        return self.code in (404, 429) or self.code >= 500


class ApiClient:
    """The operator's HTTP connection pool to the apiserver; kr8s supplies the credentials.

    Why aiohttp (which kopf already brings) rather than kr8s' httpx client: at 2,000 new runs,
    py-spy showed httpx's default pool (20 kept-alive connections, fewer than our concurrent
    writes plus the watches) re-doing TLS handshakes for 12 % of the operator's CPU, and
    httpcore's per-request scan of its pool for another 23 %. Request handling is most of what
    the operator does at scale (benchmarks/operator_scale.py), so it gets the leaner client.
    """

    def __init__(self, api: kr8s.asyncio.Api, max_connections: int) -> None:
        self.api = api
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.server = ""
        # the controller's first pass makes many calls at once: one of them creates the session
        self._lock = asyncio.Lock()

    async def session(self, renew: bool = False) -> aiohttp.ClientSession:
        if self._session is not None and not renew:
            return self._session
        async with self._lock:
            return await self._new_session(renew)

    async def _new_session(self, renew: bool) -> aiohttp.ClientSession:
        if renew and self._session is not None:
            # a 401: the service-account token was rotated on disk; read it again
            await self.api.auth.reauthenticate()
            await self._session.close()
            self._session = None
        if self._session is None:
            auth = self.api.auth
            headers = {"Authorization": f"Bearer {auth.token}"} if auth.token else {}
            ssl_ctx = await auth.ssl_context()  # type: ignore[no-untyped-call]  # kr8s is untyped
            self.server = str(auth.server).rstrip("/")
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=ssl_ctx),
                timeout=aiohttp.ClientTimeout(total=60, connect=10),
            )
        return self._session

    def url(self, path: str) -> str:
        return self.server + path

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited JSON of a watch. Not `StreamReader.readline`: it refuses lines over
    64 KiB, and one object (a run with a long status table) can be longer."""
    buf = b""
    async for chunk in stream.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buf.strip():
        yield buf


def api_path(version: str, url: str, namespace: str | None = None) -> str:
    base = "/api/v1" if version == "v1" else f"/apis/{version}"
    return f"{base}/namespaces/{namespace}/{url}" if namespace else f"{base}/{url}"


class NotLeaderError(ApiError):
    """A write refused before it was sent: this process does not (or no longer) hold the
    operator's Lease (`Kube.may_write`, core/election.py)."""

    def __init__(self, method: str, url: str) -> None:
        super().__init__(503, f"{method} {url}: not the leader; write not sent")


class ListWatchSink(Protocol):
    """Where `Kube.list_watch` delivers a LIST (pages, then the end) and the WATCH events."""

    def page(self, items: list[dict[str, Any]]) -> None: ...

    def listed(self) -> None: ...

    def event(self, event_type: str, body: dict[str, Any]) -> None: ...


class Kube:
    """Thin async wrappers around the REST calls the controller makes."""

    def __init__(
        self, http: ApiClient, cfg: Config, metrics: OperatorMetrics | None = None
    ) -> None:
        self.http = http
        self.cfg = cfg
        self.metrics = metrics
        self.sem = asyncio.Semaphore(cfg.max_concurrent_requests)
        #: the fence of leader election: asked right before each write (any method but GET) is
        #: sent, so that a leader past its renew deadline sends nothing more, whatever task
        #: tries; None = always (leader election off, or the Lease's own client)
        self.may_write: Callable[[], bool] | None = None

    @classmethod
    async def connect(
        cls, cfg: Config, metrics: OperatorMetrics | None = None, *, streams: int = 0
    ) -> Kube:
        """Credentials from kr8s (kubeconfig or in-cluster); a pool with room for every
        concurrent write and `streams` long-lived watch streams."""
        with warnings.catch_warnings():
            # kr8s warns about apiservers newer than those its object API was tested with;
            # only its credential loading is used here (requests go through ApiClient).
            warnings.filterwarnings("ignore", r"Kubernetes version .* is not supported")
            api = await kr8s.asyncio.api()
        return cls(ApiClient(api, cfg.max_concurrent_requests + streams), cfg, metrics)

    async def close(self) -> None:
        await self.http.close()

    async def request(
        self,
        method: str,
        version: str,
        url: str,
        namespace: str | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = orjson.dumps(body)
            kwargs["headers"] = {"content-type": content_type}
        if params:
            kwargs["params"] = dict(params)
        path = api_path(version, url, namespace)
        for attempt in range(THROTTLE_RETRIES + 1):
            code, raw, retry_after = await self._send(method, path, url, kwargs)
            if code != 429 or attempt == THROTTLE_RETRIES:
                break
            # API priority and fairness (or a CRD's storage still initialising) asks us to come
            # back later: honour Retry-After, capped, with exponential backoff when it is absent,
            # outside the concurrency limit so that other requests go on meanwhile.
            wait = retry_after if retry_after is not None else 0.5 * 2**attempt
            await asyncio.sleep(min(wait, THROTTLE_MAX_WAIT_S))
        # 404 and 409 are answers the callers act on (gone; exists under its deterministic name)
        if code >= 400 and code not in (404, 409):
            self._count_error(method, url, code)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = {"message": raw.decode(errors="replace")[:1024]}
        return code, data if isinstance(data, dict) else {}

    async def _send(
        self, method: str, path: str, url: str, kwargs: Mapping[str, Any]
    ) -> tuple[int, bytes, float | None]:
        """One request (again once with a renewed token after a 401): status, body and the
        Retry-After seconds of a 429."""
        try:
            async with self.sem:
                if method != "GET" and self.may_write is not None and not self.may_write():
                    raise NotLeaderError(method, url)
                for renew in (False, True):
                    session = await self.http.session(renew=renew)
                    async with session.request(method, self.http.url(path), **kwargs) as resp:
                        code, raw = resp.status, await resp.read()
                        retry = resp.headers.get("Retry-After", "")
                    if code != 401:
                        break
        except (aiohttp.ClientError, TimeoutError):
            self._count_error(method, url, None)
            raise
        return code, raw, float(retry) if retry.isdigit() else None

    def _count_error(self, method: str, url: str, code: int | None) -> None:
        if self.metrics is not None:
            # the resource without the object name: bounded label values
            parts = url.split("/")
            resource = parts[0] + (f"/{parts[2]}" if len(parts) > 2 else "")
            self.metrics.count_apiserver_error(method, resource, code)

    async def list_pages(
        self,
        version: str,
        plural: str,
        namespace: str | None,
        selector: str = "",
        limit: int = 500,
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """A paginated LIST, page by page, with the resourceVersion of its snapshot (the first
        page's). Page by page so a re-LIST of 20,000 pods never holds them all at once."""
        cont, rv = "", ""
        while True:
            params = {"limit": str(limit)}
            if cont:
                params["continue"] = cont
            if selector:
                params["labelSelector"] = selector
            code, data = await self.request("GET", version, plural, namespace, params=params)
            if code != 200:
                raise ApiError(code, f"LIST {plural}: {code} {data.get('message')}")
            meta = data.get("metadata") or {}
            rv = rv or meta.get("resourceVersion", "")
            cont = meta.get("continue") or ""
            yield data.get("items") or [], rv
            if not cont:
                return

    async def list_all(
        self, version: str, plural: str, namespaces: tuple[str, ...] = (), selector: str = ""
    ) -> list[dict[str, Any]]:
        """Paginated LIST (cluster-wide, or one call per namespace)."""
        out: list[dict[str, Any]] = []
        for ns in namespaces or (None,):
            async for items, _ in self.list_pages(version, plural, ns, selector):
                out.extend(items)
        return out

    async def list_watch(
        self,
        sink: ListWatchSink,
        version: str,
        plural: str,
        namespace: str | None,
        stop: asyncio.Event,
        selector: str = "",
    ) -> None:
        """LIST (page by page into `sink`), then WATCH from that resourceVersion; re-LIST when
        the watch expires (410) or fails, and every relist_seconds.

        A plain streaming watch rather than kopf's per-object machinery: at 10,000 runs the
        pods alone make tens of thousands of events, and copying each into a cache is all the
        operator needs (kopf spends milliseconds and a worker task per object on them)."""
        rv = ""
        listed = 0.0
        failures = 0
        while not stop.is_set():
            try:
                if not rv or time.monotonic() - listed > self.cfg.relist_seconds:
                    async for items, list_rv in self.list_pages(
                        version, plural, namespace, selector
                    ):
                        rv = list_rv  # the snapshot's: the watch continues from it
                        sink.page(items)
                    sink.listed()
                    listed = time.monotonic()
                    failures = 0
                params = {
                    "watch": "true",
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(int(min(290, self.cfg.relist_seconds))),
                }
                if selector:
                    params["labelSelector"] = selector
                session = await self.http.session()
                async with session.get(
                    self.http.url(api_path(version, plural, namespace)),
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=None, connect=10),
                ) as resp:
                    if resp.status != 200:
                        text = (await resp.read()).decode(errors="replace")
                        if resp.status == 401:
                            await self.http.session(renew=True)
                        raise RuntimeError(f"WATCH {plural}: {resp.status} {text[:200]}")
                    async for line in _lines(resp.content):
                        event = orjson.loads(line)
                        etype, obj = event.get("type"), event.get("object") or {}
                        if etype == "ERROR":
                            rv = ""  # e.g. 410 Gone: too old, re-LIST
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if etype != "BOOKMARK":
                            sink.event(str(etype), obj)
                        if stop.is_set():
                            return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network trouble, apiserver restart: re-LIST shortly
                failures += 1
                delay = relist_delay(failures)
                hint = (
                    f" (is the CRD {plural}.{version.split('/')[0]} installed?)"
                    if isinstance(exc, ApiError) and exc.code == 404 and "/" in version
                    else ""
                )
                log.warning(
                    "watch %s in %s: %s%s; re-listing in %.0f s",
                    plural,
                    namespace or "*",
                    exc,
                    hint,
                    delay,
                )
                rv = ""
                await asyncio.sleep(delay)

    async def secret_keys(self, namespace: str, name: str) -> tuple[frozenset[str], str] | None:
        """The keys of a Secret (never its values) and its resourceVersion, or None when it does
        not exist."""
        code, data = await self.request("GET", "v1", f"secrets/{name}", namespace)
        if code == 404:
            return None
        if code != 200:
            raise ApiError(code, f"GET secret {namespace}/{name}: {code} {data.get('message')}")
        keys = set((data.get("data") or {}).keys()) | set((data.get("stringData") or {}).keys())
        return frozenset(keys), str((data.get("metadata") or {}).get("resourceVersion", ""))

    async def secret_values(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded (the storage preflight's credentials), or None when it does
        not exist. The values go to the caller only: never into a log, an Event or status."""
        code, data = await self.request("GET", "v1", f"secrets/{name}", namespace)
        if code == 404:
            return None
        if code != 200:
            raise ApiError(code, f"GET secret {namespace}/{name}: {code} {data.get('message')}")
        raw = data.get("data") or {}
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in raw.items()}

    async def create(self, obj: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Create; the caller treats 409 AlreadyExists as success (names are deterministic)."""
        plural = plural_of(obj["kind"])
        namespace = obj["metadata"]["namespace"]
        return await self.request("POST", obj["apiVersion"], plural, namespace, obj)

    async def delete_pod(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        return await self.request("DELETE", "v1", f"pods/{name}", namespace)

    async def delete(
        self, resource: Resource, namespace: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        """Delete an object; its children go in the background (garbage collector)."""
        body = {"propagationPolicy": "Background"}
        return await self._object("DELETE", resource, namespace, name, body)

    async def patch(
        self, resource: Resource, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """JSON merge patch of an object (metadata and spec)."""
        return await self._object("PATCH", resource, namespace, name, patch, MERGE_PATCH)

    async def patch_status(
        self, resource: Resource, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """JSON merge patch of an object's status subresource."""
        body = {"status": patch}
        status = f"{name}/status"
        return await self._object("PATCH", resource, namespace, status, body, MERGE_PATCH)

    async def _object(
        self,
        method: str,
        resource: Resource,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        url = f"{resource.plural}/{name}"
        return await self.request(method, resource.api_version, url, namespace, body, content_type)

    async def event(
        self, involved: Mapping[str, str], etype: str, reason: str, message: str
    ) -> None:
        """Post an Event about `involved` (an object reference: apiVersion, kind, name,
        namespace, uid). Its name says what it is (core/events.py): a 409 is the same news
        posted before, and raises that Event's count. A refused Event is logged, never raised:
        it must not stop a pass."""
        body = event_body(involved, etype, reason, message, time.time())
        code, data = await self.create(body)
        if code == 409:
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            code, data = await self.request("GET", "v1", f"events/{name}", ns)
            if code == 200:
                code, data = await self.patch(EVENTS, ns, name, repeat_patch(data, time.time()))
        if code >= 300:
            log.warning(
                "event %s on %s not posted: %s", reason, involved.get("name"), data.get("message")
            )
