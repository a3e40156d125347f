"""Experiments and the TrainingRuns labelled as their trials, as the watches report them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.core.objects import LABEL_EXPERIMENT, object_key, resource_version

Key = tuple[str, str]


@dataclass
class ExperimentCache:
    """Experiments and the TrainingRuns labelled as their trials, as the watches report them."""

    experiments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: (namespace, experiment) -> run name -> body
    trials: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    #: namespaces ("" = all) whose trial runs have been listed once
    trials_listed: set[str] = field(default_factory=set)

    def apply(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], wake: bool = True
    ) -> None:
        deleted = event_type == "DELETED"
        ns, name = object_key(body)
        if kind == "experiment":
            old = self.experiments.get((ns, name))
            if deleted:
                self.experiments.pop((ns, name), None)
            elif old is None or resource_version(body) >= resource_version(old):
                self.experiments[(ns, name)] = dict(body)
        else:
            exp = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_EXPERIMENT)
            if not exp:
                return
            runs = self.trials.setdefault((ns, exp), {})
            old = runs.get(name)
            if deleted:
                runs.pop(name, None)
            elif old is None or resource_version(body) >= resource_version(old):
                runs[name] = dict(body)
            if not runs:
                self.trials.pop((ns, exp), None)
        if wake:
            self.dirty.set()

    def replace_all(
        self, kind: str, items: Iterable[Mapping[str, Any]], namespace: str | None = None
    ) -> None:
        """A full LIST (of one namespace, or of all). Entries newer than the listing (a watch
        event that overtook it) are kept; entries missing from it are dropped unless they are
        newer than all it holds."""
        items = list(items)
        newest = max((resource_version(i) for i in items), default=0)
        listed = {object_key(i) for i in items}
        if kind == "experiment":
            for key, body in list(self.experiments.items()):
                if key not in listed and resource_version(body) <= newest:
                    del self.experiments[key]
        else:
            for exp_key, runs in list(self.trials.items()):
                if namespace is not None and exp_key[0] != namespace:
                    continue
                for name, body in list(runs.items()):
                    if (exp_key[0], name) not in listed and resource_version(body) <= newest:
                        del runs[name]
                if not runs:
                    del self.trials[exp_key]
        for item in items:
            self.apply(kind, None, item, wake=False)
        self.dirty.set()

    def trials_of(self, namespace: str, experiment: str) -> list[dict[str, Any]]:
        return list(self.trials.get((namespace, experiment), {}).values())


@dataclass
class TrialSink:
    """Trial runs of one namespace (None: all) from `Kube.list_watch` into the cache."""

    cache: ExperimentCache
    namespace: str | None
    items: list[dict[str, Any]] = field(default_factory=list)

    def page(self, items: list[dict[str, Any]]) -> None:
        self.items.extend(items)  # trials are few: the whole LIST is applied at its end

    def listed(self) -> None:
        self.cache.replace_all("run", self.items, self.namespace)
        self.items = []
        self.cache.trials_listed.add(self.namespace or "")

    def event(self, event_type: str, body: dict[str, Any]) -> None:
        self.cache.apply("run", event_type, body)


def fingerprint(exp: Mapping[str, Any], trials: Iterable[Mapping[str, Any]]) -> tuple[Any, ...]:
    """What a decision depends on: unchanged -> the pass skips the experiment."""
    return (
        resource_version(exp),
        tuple(sorted((object_key(t)[1], resource_version(t)) for t in trials)),
    )
