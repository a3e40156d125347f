"""Kubernetes I/O: the in-memory view of the cluster and the calls that change it.

The only module (with `controller`) that talks to the apiserver. Reads come from a cache fed by
kopf's watch streams (`ClusterCache.apply`) and seeded/repaired by full LISTs; writes are plain
REST calls through kr8s' async client, whose responses go back into the cache at once so the next
pass does not act on a view older than its own writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import kr8s.asyncio
import orjson

from accordion_operator import builders
from accordion_operator.allocator import Node, PodUse, RunRequest, Taint
from accordion_operator.api.common import API_VERSION, GROUP, VERSION, ObjectMeta
from accordion_operator.api.trainingrun import KIND, PLURAL, TrainingRun
from accordion_operator.config import Config
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.reconcile import (
    PodState,
    SecretInfo,
    parse_run,
    pod_state,
    run_request,
    to_rfc3339,
    wants_gpus,
)

log = logging.getLogger("accordion.kube")
CR_VERSION = f"{GROUP}/{VERSION}"
#: what the cache watches: kind -> (apiVersion, plural, namespaced)
WATCHED = {
    "node": ("v1", "nodes", False),
    "pod": ("v1", "pods", True),
    "run": (CR_VERSION, PLURAL, True),
}


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def node_from(body: Mapping[str, Any], gpu_resource: str) -> Node:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    alloc = (body.get("status") or {}).get("allocatable") or {}
    try:
        gpus = int(alloc.get(gpu_resource, 0))
    except ValueError:
        gpus = 0
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (body.get("status") or {}).get("conditions") or ()
    )
    return Node(
        name=meta.get("name", ""),
        gpus=gpus,
        labels=dict(meta.get("labels") or {}),
        taints=tuple(
            Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", "NoSchedule"))
            for t in spec.get("taints") or ()
        ),
        unschedulable=bool(spec.get("unschedulable")) or not ready,
    )


def object_key(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


#: the metadata keys the run model reads (no managedFields, annotations: a kubectl-applied run
#: carries its whole spec again in last-applied-configuration)
_META_KEYS = frozenset(f.alias or n for n, f in ObjectMeta.model_fields.items())


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The run as the cache keeps it: without what the run controller never reads, i.e.
    `status.training.history` (the Experiment controller keeps its own copies of trial runs; 50
    epochs of metrics were 34 KB of ~45 KB per cached run) and metadata the model ignores."""
    meta = body.get("metadata") or {}
    slim = {**body, "metadata": {k: v for k, v in meta.items() if k in _META_KEYS}}
    status = body.get("status")
    training = status.get("training") if isinstance(status, Mapping) else None
    if isinstance(training, Mapping) and "history" in training:
        rest = {k: v for k, v in training.items() if k != "history"}
        slim["status"] = {**status, "training": rest}  # type: ignore[dict-item]
    return slim


@dataclass(frozen=True, slots=True)
class CachedRun:
    """One TrainingRun as the cache holds it: the fields every controller pass reads, and the
    object as compact JSON, parsed into the model only when a pass has to decide the run.

    Why not the parsed model: a TrainingRun with its six conditions is ~17 KB of pydantic
    objects and ~2 KB of JSON; at 10,000 runs that was 170 MB of the operator's memory
    (`benchmarks/operator_memory`). A pass over settled runs needs only the summary fields;
    parsing the JSON again costs ~45 us for the few runs whose inputs changed."""

    namespace: str
    name: str
    rv: int
    resource_version: str
    uid: str
    priority: int
    created: str
    phase: str
    #: reconcile.wants_gpus of the model: takes part in allocation
    wants_gpus: bool
    #: status.startTime is set (input checks apply only before the run starts)
    started: bool
    #: status.observedGeneration is the current generation: the operator has acted on this spec
    decided: bool
    #: the allocator's input, derived once per version of the run
    request: RunRequest | None
    labels: Mapping[str, str]
    #: names of the credentials Secrets the spec refers to
    secret_names: tuple[str, ...]
    #: the slimmed object, compact JSON
    raw: bytes
    #: (reason, message) when the object does not parse (a value the schema lets through)
    invalid: tuple[str, str] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def model(self) -> TrainingRun:
        """The parsed run (only valid runs are ever parsed: `invalid` is None)."""
        return TrainingRun.model_validate_json(self.raw)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.raw)
        return body

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CachedRun:
        slim = _slim(body)
        # stdlib json, not orjson: orjson's bytes keep their 64 KB write buffer allocated
        raw = json.dumps(slim, separators=(",", ":")).encode()
        parsed = parse_run(slim)
        if isinstance(parsed, TrainingRun):
            meta, spec, st = parsed.metadata, parsed.spec, parsed.status
            secrets = {spec.results.credentials_secret.name}
            if spec.data is not None:
                secrets.add(spec.data.credentials_secret.name)
            return cls(
                namespace=meta.namespace,
                name=meta.name,
                rv=_rv(body),
                resource_version=meta.resource_version,
                uid=meta.uid,
                priority=spec.priority,
                created=meta.creation_timestamp or "",
                phase=st.phase or "Pending",
                wants_gpus=wants_gpus(parsed),
                started=st.start_time is not None,
                decided=st.observed_generation == meta.generation,
                request=run_request(parsed),
                labels=meta.labels,
                secret_names=tuple(sorted(secrets)),
                raw=raw,
                invalid=None,
            )
        meta = slim["metadata"]
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            rv=_rv(body),
            resource_version=str(meta.get("resourceVersion", "")),
            uid=str(meta.get("uid", "")),
            priority=0,
            created=str(meta.get("creationTimestamp", "")),
            phase=str((slim.get("status") or {}).get("phase") or "Pending"),
            wants_gpus=False,
            started=False,
            decided=False,
            request=None,
            labels={},
            secret_names=(),
            raw=raw,
            invalid=parsed,
        )


@dataclass
class ClusterCache:
    """What the controller knows about runs, their pods, all GPU pods and the nodes."""

    cfg: Config
    runs: dict[tuple[str, str], CachedRun] = field(default_factory=dict)
    #: Accordion pods by (namespace, run) -> name -> state
    run_pods: dict[tuple[str, str], dict[str, PodState]] = field(default_factory=dict)
    #: every bound, non-terminal GPU pod: (namespace, name) -> use
    gpu_pods: dict[tuple[str, str], PodUse] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    _pod_rv: dict[tuple[str, str], int] = field(default_factory=dict)
    #: resourceVersion at which a pod was seen DELETED: the response to our own DELETE can
    #: arrive after the watch's DELETED event (a process that is already dead goes at once),
    #: and must not bring the pod back into the cache.
    _pod_gone: dict[tuple[str, str], int] = field(default_factory=dict)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    #: (kind, namespace or "") whose initial LIST has been loaded
    synced: set[tuple[str, str]] = field(default_factory=set)
    #: runs seen for the first time so far (a long pass yields to new arrivals)
    arrivals: int = 0

    # --- feeding -----------------------------------------------------------------------------

    def apply(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], wake: bool = True
    ) -> None:
        """One watch event (or one item of a LIST, event_type None). ``wake=False`` for the
        responses to our own writes: the pass that made them already accounted for them."""
        deleted = event_type == "DELETED"
        if kind == "run":
            self._apply_run(body, deleted)
        elif kind == "pod":
            self._apply_pod(body, deleted)
        elif kind == "node":
            self._apply_node(body, deleted)
        if wake:
            self.dirty.set()

    def _apply_run(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        old = self.runs.get(key)
        rv = _rv(body)
        if deleted:
            self.runs.pop(key, None)
            return
        if old is None:
            self.arrivals += 1
        if old is not None and rv and rv < old.rv:
            return  # an older copy than the one we hold (e.g. a LIST racing our own patch)
        self.runs[key] = CachedRun.of(body)

    def _apply_pod(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        rv = _rv(body)
        if not deleted and rv and rv < self._pod_rv.get(key, 0):
            return
        if not deleted and key in self._pod_gone:
            if rv and rv <= self._pod_gone[key]:
                return  # a copy from before its deletion
            del self._pod_gone[key]  # a new pod of the same name
        state = pod_state(body, self.cfg.gpu_resource)
        labels = meta.get("labels") or {}
        run = labels.get(builders.LABEL_RUN)
        ours = run is not None and labels.get(builders.LABEL_MANAGED_BY) == builders.MANAGED_BY
        if deleted:
            self._pod_rv.pop(key, None)
            self._pod_gone[key] = rv
            self.gpu_pods.pop(key, None)
            if ours:
                pods = self.run_pods.get((key[0], run or ""))
                if pods is not None:
                    pods.pop(key[1], None)
                    if not pods:
                        self.run_pods.pop((key[0], run or ""), None)
            return
        self._pod_rv[key] = rv
        if state.gpus and state.node and not state.terminal:
            self.gpu_pods[key] = PodUse(state.node, state.gpus, f"{key[0]}/{run}" if ours else None)
        else:
            self.gpu_pods.pop(key, None)
        if ours:
            self.run_pods.setdefault((key[0], run or ""), {})[key[1]] = state

    def _apply_node(self, body: Mapping[str, Any], deleted: bool) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        if deleted:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = node_from(body, self.cfg.gpu_resource)

    def replace_all(
        self, kind: str, items: Iterable[Mapping[str, Any]], namespace: str | None = None
    ) -> None:
        """A full LIST (of one namespace, or of all): forget what is gone, apply what is there."""
        items = list(items)
        self.forget_missing(kind, {object_key(i) for i in items}, namespace)
        for item in items:
            self.apply(kind, None, item)

    def forget_missing(
        self, kind: str, seen: set[tuple[str, str]], namespace: str | None = None
    ) -> None:
        """After a full LIST of `namespace` (None: all) whose objects were `seen`: drop the rest."""

        def in_scope(ns: str) -> bool:
            return namespace is None or ns == namespace

        if kind == "run":
            for key in list(self.runs):
                if key not in seen and in_scope(key[0]):
                    del self.runs[key]
        elif kind == "pod":
            # a LIST is the truth: tombstones older than it are no longer needed
            self._pod_gone = {k: v for k, v in self._pod_gone.items() if not in_scope(k[0])}
            for key in list(self._pod_rv):
                if key not in seen and in_scope(key[0]):
                    self.gpu_pods.pop(key, None)
                    self._pod_rv.pop(key, None)
            for rk, pods in list(self.run_pods.items()):
                if not in_scope(rk[0]):
                    continue
                for name in list(pods):
                    if (rk[0], name) not in seen:
                        del pods[name]
                if not pods:
                    del self.run_pods[rk]
        elif kind == "node":
            names = {name for _, name in seen}
            for name in list(self.nodes):
                if name not in names:
                    del self.nodes[name]
        self.dirty.set()

    # --- reading ---------------------------------------------------------------------------------

    def pods_of(self, namespace: str, run: str) -> list[PodState]:
        return list(self.run_pods.get((namespace, run), {}).values())


class ListWatchSink(Protocol):
    """Where `Kube.list_watch` delivers a LIST (pages, then the end) and the WATCH events."""

    def page(self, items: list[dict[str, Any]]) -> None: ...

    def listed(self) -> None: ...

    def event(self, event_type: str, body: dict[str, Any]) -> None: ...


@dataclass
class CacheSink:
    """One kind in one namespace (None: all) of the ClusterCache, fed by LIST+WATCH."""

    cache: ClusterCache
    kind: str
    namespace: str | None
    seen: set[tuple[str, str]] = field(default_factory=set)

    def page(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.cache.apply(self.kind, None, item, wake=False)
            self.seen.add(object_key(item))

    def listed(self) -> None:
        self.cache.forget_missing(self.kind, self.seen, self.namespace)
        self.seen = set()
        self.cache.synced.add((self.kind, self.namespace or ""))
        self.cache.dirty.set()

    def event(self, event_type: str, body: dict[str, Any]) -> None:
        self.cache.apply(self.kind, event_type, body)


# --- writing -------------------------------------------------------------------------------------


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


class Kube:
    """Thin async wrappers around the REST calls the controller makes."""

    def __init__(
        self, http: ApiClient, cfg: Config, metrics: OperatorMetrics | None = None
    ) -> None:
        self.http = http
        self.cfg = cfg
        self.metrics = metrics
        self.sem = asyncio.Semaphore(cfg.max_concurrent_requests)

    @classmethod
    async def connect(
        cls, cfg: Config, metrics: OperatorMetrics | None = None, *, watches: bool
    ) -> Kube:
        """Credentials from kr8s (kubeconfig or in-cluster); a pool with room for every
        concurrent write and, with `watches`, one long-lived stream per watched kind and scope."""
        with warnings.catch_warnings():
            # kr8s warns about apiservers newer than those its object API was tested with;
            # only its credential loading is used here (requests go through ApiClient).
            warnings.filterwarnings("ignore", r"Kubernetes version .* is not supported")
            api = await kr8s.asyncio.api()
        streams = len(WATCHED) * max(1, len(cfg.namespaces)) if watches else 0
        return cls(ApiClient(api, cfg.max_concurrent_requests + streams), cfg, metrics)

    async def close(self) -> None:
        await self.http.close()

    async def _call(
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
        try:
            async with self.sem:
                for renew in (False, True):
                    session = await self.http.session(renew=renew)
                    async with session.request(method, self.http.url(path), **kwargs) as resp:
                        code, raw = resp.status, await resp.read()
                    if code != 401:
                        break
        except (aiohttp.ClientError, TimeoutError):
            self._count_error(method, url, None)
            raise
        # 404 and 409 are answers the callers act on (gone; exists under its deterministic name)
        if code >= 400 and code not in (404, 409):
            self._count_error(method, url, code)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = {"message": raw.decode(errors="replace")[:1024]}
        return code, data if isinstance(data, dict) else {}

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
            code, data = await self._call("GET", version, plural, namespace, params=params)
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

    async def watch(self, cache: ClusterCache, kind: str, stop: asyncio.Event) -> None:
        """Keep `cache` current for one kind (in every watched namespace): see `list_watch`."""
        version, plural, namespaced = WATCHED[kind]
        scopes: tuple[str | None, ...] = (
            self.cfg.namespaces if namespaced and self.cfg.namespaces else (None,)
        )
        await asyncio.gather(
            *(
                self.list_watch(CacheSink(cache, kind, ns), version, plural, ns, stop)
                for ns in scopes
            )
        )

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
                log.warning("watch %s in %s: %s; re-listing", plural, namespace or "*", exc)
                rv = ""
                await asyncio.sleep(1.0)

    def expected_syncs(self) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for kind, (_, _, namespaced) in WATCHED.items():
            for ns in self.cfg.namespaces if namespaced and self.cfg.namespaces else ("",):
                out.add((kind, ns))
        return out

    async def secret_keys(self, namespace: str, name: str) -> SecretInfo | None:
        code, data = await self._call("GET", "v1", f"secrets/{name}", namespace)
        if code == 404:
            return None
        if code != 200:
            raise ApiError(code, f"GET secret {namespace}/{name}: {code} {data.get('message')}")
        keys = set((data.get("data") or {}).keys()) | set((data.get("stringData") or {}).keys())
        return SecretInfo(frozenset(keys))

    async def create(self, obj: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Create; 409 AlreadyExists counts as success (names are deterministic)."""
        version = obj["apiVersion"]
        plural = {
            "Pod": "pods",
            "Secret": "secrets",
            "ServiceAccount": "serviceaccounts",
            "Role": "roles",
            "RoleBinding": "rolebindings",
            "Event": "events",
            KIND: PLURAL,
        }[obj["kind"]]
        return await self._call("POST", version, plural, obj["metadata"]["namespace"], obj)

    async def delete_pod(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        return await self._call("DELETE", "v1", f"pods/{name}", namespace)

    async def patch_run_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        return await self._call(
            "PATCH",
            CR_VERSION,
            f"{PLURAL}/{name}/status",
            namespace,
            {"status": patch},
            content_type="application/merge-patch+json",
        )

    async def delete_run(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        return await self._call(
            "DELETE",
            CR_VERSION,
            f"{PLURAL}/{name}",
            namespace,
            {"propagationPolicy": "Background"},
        )

    async def event(self, meta: ObjectMeta, etype: str, reason: str, message: str) -> None:
        now = to_rfc3339(time.time())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
            },
            "type": etype,
            "reason": reason[:128],
            "message": message[:1024],
            "source": {"component": builders.MANAGED_BY},
            "reportingComponent": builders.MANAGED_BY,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        code, data = await self.create(body)
        if code >= 300:
            log.warning("event %s on %s not posted: %s", reason, meta.name, data.get("message"))
