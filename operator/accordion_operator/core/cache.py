"""The cache mechanism both controllers use: a store of objects fed by LIST+WATCH streams.

Each controller keeps its own store (what it needs of each object, in its own shape) and
implements two operations, `apply` (one object or watch event) and `forget_missing` (after a
full LIST); everything else is shared: which kinds are watched where (`Watch`), the sink that
turns `Kube.list_watch`'s pages and events into those operations, and the bookkeeping of which
initial LISTs have completed (a controller acts only on a complete view).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.config import Config
from accordion_operator.core.kube import Kube
from accordion_operator.core.objects import object_key, resource_version


@dataclass(kw_only=True)
class Store:
    """Base of a controller's cache. `dirty` wakes the controller's loop; `synced` holds the
    (kind, namespace or "") whose initial LIST has been loaded."""

    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    synced: set[tuple[str, str]] = field(default_factory=set)

    def apply(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], wake: bool = True
    ) -> None:
        """One watch event, or one item of a LIST (event_type None). ``wake=False`` for the
        responses to the controller's own writes: the pass that made them accounted for them."""
        raise NotImplementedError

    def forget_missing(
        self, kind: str, seen: set[tuple[str, str]], namespace: str | None, newest: int
    ) -> None:
        """After a full LIST of `namespace` (None: all) that held `seen`, the newest of them at
        resourceVersion `newest`: drop the rest."""
        raise NotImplementedError

    def replace_all(
        self, kind: str, items: Iterable[Mapping[str, Any]], namespace: str | None = None
    ) -> None:
        """A full LIST at once (of one namespace, or of all)."""
        sink = StoreSink(self, kind, namespace)
        sink.page(list(items))
        sink.listed()


@dataclass
class StoreSink:
    """One kind in one namespace (None: all) of a store, fed by `Kube.list_watch`: the LIST's
    pages are applied as they come (a re-LIST of 20,000 pods is never held at once), then what
    the LIST did not hold is forgotten."""

    store: Store
    kind: str
    namespace: str | None
    seen: set[tuple[str, str]] = field(default_factory=set)
    newest: int = 0

    def page(self, items: Sequence[Mapping[str, Any]]) -> None:
        for item in items:
            self.store.apply(self.kind, None, item, wake=False)
            self.seen.add(object_key(item))
            self.newest = max(self.newest, resource_version(item))

    def listed(self) -> None:
        self.store.forget_missing(self.kind, self.seen, self.namespace, self.newest)
        self.seen, self.newest = set(), 0
        self.store.synced.add((self.kind, self.namespace or ""))
        self.store.dirty.set()

    def event(self, event_type: str, body: Mapping[str, Any]) -> None:
        self.store.apply(self.kind, event_type, body)


@dataclass(frozen=True)
class Watch:
    """One kind a controller watches: the store's name for it and where the apiserver has it."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    #: a server-side label selector ("" for all objects)
    selector: str = ""

    def scopes(self, cfg: Config) -> tuple[str | None, ...]:
        """The namespaces (None: all) it is watched in."""
        return cfg.namespaces if self.namespaced and cfg.namespaces else (None,)


def stream_count(cfg: Config, watches: Iterable[Watch]) -> int:
    """How many watch streams stay open (the connection pool makes room for them)."""
    return sum(len(w.scopes(cfg)) for w in watches)


def expected_syncs(cfg: Config, watches: Iterable[Watch]) -> set[tuple[str, str]]:
    """(kind, namespace or "") of every initial LIST a controller waits for before acting."""
    return {(w.kind, ns or "") for w in watches for ns in w.scopes(cfg)}


async def watch_all(
    kube: Kube, store: Store, watches: Iterable[Watch], stop: asyncio.Event
) -> None:
    """Keep `store` current for every watch in every scope, until `stop` (or cancelled)."""
    await asyncio.gather(
        *(
            kube.list_watch(
                StoreSink(store, w.kind, ns), w.api_version, w.plural, ns, stop, w.selector
            )
            for w in watches
            for ns in w.scopes(kube.cfg)
        )
    )


async def run_watched(
    loop: Coroutine[Any, Any, None],
    kube: Kube,
    store: Store,
    watches: Iterable[Watch],
    stop: asyncio.Event,
) -> None:
    """Run a controller's `loop` with the watches that feed its store; they end with it."""
    feeding = asyncio.create_task(watch_all(kube, store, watches, stop), name="watches")
    try:
        await loop
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
