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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import kr8s.asyncio

from accordion_operator import builders
from accordion_operator.allocator import Node, PodUse, Taint
from accordion_operator.api.common import API_VERSION, GROUP, VERSION, ObjectMeta
from accordion_operator.api.trainingrun import KIND, PLURAL, TrainingRun
from accordion_operator.config import Config
from accordion_operator.reconcile import PodState, SecretInfo, parse_run, pod_state, to_rfc3339

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


@dataclass
class ParsedRun:
    #: the raw object, kept only when it does not parse (to report it)
    body: dict[str, Any]
    run: TrainingRun | None
    #: (reason, message) when the object does not parse (a value the schema lets through)
    invalid: tuple[str, str] | None
    rv: int


@dataclass
class ClusterCache:
    """What the controller knows about runs, their pods, all GPU pods and the nodes."""

    cfg: Config
    runs: dict[tuple[str, str], ParsedRun] = field(default_factory=dict)
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
        if old is not None and rv and rv < old.rv:
            return  # an older copy than the one we hold (e.g. a LIST racing our own patch)
        parsed = parse_run(body)
        if isinstance(parsed, TrainingRun):
            self.runs[key] = ParsedRun({}, parsed, None, rv)  # the model is all we need
        else:
            self.runs[key] = ParsedRun(dict(body), None, parsed, rv)

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

        def in_scope(ns: str) -> bool:
            return namespace is None or ns == namespace

        if kind == "run":
            seen = {((i["metadata"].get("namespace", "")), i["metadata"]["name"]) for i in items}
            for key in list(self.runs):
                if key not in seen and in_scope(key[0]):
                    del self.runs[key]
        elif kind == "pod":
            seen = {((i["metadata"].get("namespace", "")), i["metadata"]["name"]) for i in items}
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
            names = {i["metadata"]["name"] for i in items}
            for name in list(self.nodes):
                if name not in names:
                    del self.nodes[name]
        for item in items:
            self.apply(kind, None, item)

    # --- reading ---------------------------------------------------------------------------------

    def pods_of(self, namespace: str, run: str) -> list[PodState]:
        return list(self.run_pods.get((namespace, run), {}).values())


# --- writing -------------------------------------------------------------------------------------


class Kube:
    """Thin async wrappers around the REST calls the controller makes."""

    def __init__(self, api: kr8s.asyncio.Api, cfg: Config) -> None:
        self.api = api
        self.cfg = cfg
        self.sem = asyncio.Semaphore(cfg.max_concurrent_requests)

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
            kwargs["content"] = json.dumps(body)
            kwargs["headers"] = {"content-type": content_type}
        if params:
            kwargs["params"] = dict(params)
        async with (
            self.sem,
            self.api.call_api(
                method,
                version=version,
                url=url,
                namespace=namespace,
                raise_for_status=False,
                **kwargs,
            ) as resp,
        ):
            try:
                data = resp.json()
            except ValueError:
                data = {"message": resp.text}
            return resp.status_code, data if isinstance(data, dict) else {}

    async def list_all(
        self, version: str, plural: str, namespaces: tuple[str, ...] = (), selector: str = ""
    ) -> list[dict[str, Any]]:
        """Paginated LIST (cluster-wide, or one call per namespace)."""
        out: list[dict[str, Any]] = []
        for ns in namespaces or (None,):
            cont = ""
            while True:
                params = {"limit": "2000"}
                if cont:
                    params["continue"] = cont
                if selector:
                    params["labelSelector"] = selector
                code, data = await self._call("GET", version, plural, ns, params=params)
                if code != 200:
                    raise RuntimeError(f"LIST {plural}: {code} {data.get('message')}")
                out.extend(data.get("items") or [])
                cont = (data.get("metadata") or {}).get("continue") or ""
                if not cont:
                    break
        return out

    async def list_page(
        self, version: str, plural: str, namespace: str | None
    ) -> tuple[list[dict[str, Any]], str]:
        """A full paginated LIST and the resourceVersion to watch from."""
        out: list[dict[str, Any]] = []
        cont, rv = "", ""
        while True:
            params = {"limit": "2000"}
            if cont:
                params["continue"] = cont
            code, data = await self._call("GET", version, plural, namespace, params=params)
            if code != 200:
                raise RuntimeError(f"LIST {plural}: {code} {data.get('message')}")
            out.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            rv = rv or meta.get("resourceVersion", "")
            cont = meta.get("continue") or ""
            if not cont:
                return out, rv

    async def watch(self, cache: ClusterCache, kind: str, stop: asyncio.Event) -> None:
        """Keep `cache` current for one kind: LIST, then WATCH from that resourceVersion;
        re-LIST when the watch expires (410) or fails, and every relist_seconds.

        A plain streaming watch rather than kopf's per-object machinery: at 10,000 runs the
        pods alone make tens of thousands of events, and copying each into the cache is all
        the operator needs (kopf spends milliseconds per event on per-object workers)."""
        version, plural, namespaced = WATCHED[kind]
        scopes: tuple[str | None, ...] = (
            self.cfg.namespaces if namespaced and self.cfg.namespaces else (None,)
        )
        await asyncio.gather(
            *(self._watch(cache, kind, version, plural, ns, stop) for ns in scopes)
        )

    async def _watch(
        self,
        cache: ClusterCache,
        kind: str,
        version: str,
        plural: str,
        namespace: str | None,
        stop: asyncio.Event,
    ) -> None:
        rv = ""
        listed = 0.0
        while not stop.is_set():
            try:
                if not rv or time.monotonic() - listed > self.cfg.relist_seconds:
                    items, rv = await self.list_page(version, plural, namespace)
                    cache.replace_all(kind, items, namespace)
                    cache.synced.add((kind, namespace or ""))
                    cache.dirty.set()
                    listed = time.monotonic()
                params = {
                    "watch": "true",
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(int(min(290, self.cfg.relist_seconds))),
                }
                async with self.api.call_api(
                    "GET",
                    version=version,
                    url=plural,
                    namespace=namespace,
                    stream=True,
                    params=params,
                    timeout=httpx.Timeout(None, connect=10),
                ) as resp:
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        etype, obj = event.get("type"), event.get("object") or {}
                        if etype == "ERROR":
                            rv = ""  # e.g. 410 Gone: too old, re-LIST
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if etype != "BOOKMARK":
                            cache.apply(kind, etype, obj)
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

    async def seed(self, cache: ClusterCache) -> None:
        ns = self.cfg.namespaces
        cache.replace_all("node", await self.list_all("v1", "nodes"))
        cache.replace_all("pod", await self.list_all("v1", "pods", ns))
        cache.replace_all("run", await self.list_all(CR_VERSION, PLURAL, ns))

    async def secret_keys(self, namespace: str, name: str) -> SecretInfo | None:
        code, data = await self._call("GET", "v1", f"secrets/{name}", namespace)
        if code == 404:
            return None
        if code != 200:
            raise RuntimeError(f"GET secret {namespace}/{name}: {code} {data.get('message')}")
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
