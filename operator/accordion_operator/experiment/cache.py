"""Experiments and the TrainingRuns labelled as their trials, as the watches report them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.common import API_VERSION
from accordion_operator.api.experiment import PLURAL as EXPERIMENT_PLURAL
from accordion_operator.api.trainingrun import PLURAL as RUN_PLURAL
from accordion_operator.core.cache import Store, Watch
from accordion_operator.core.objects import LABEL_EXPERIMENT, object_key, resource_version

Key = tuple[str, str]


#: what the cache watches: Experiments, and only the TrainingRuns that are some Experiment's trials
#: (a server-side label selector: the 10,000 runs that are no experiment's never reach it)
WATCHES = (
    Watch("experiment", API_VERSION, EXPERIMENT_PLURAL),
    Watch("run", API_VERSION, RUN_PLURAL, selector=LABEL_EXPERIMENT),
)


@dataclass
class ExperimentCache(Store):
    """Experiments and the TrainingRuns labelled as their trials, as the watches report them."""

    experiments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: (namespace, experiment) -> run name -> body
    trials: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)

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

    def forget_missing(
        self, kind: str, seen: set[tuple[str, str]], namespace: str | None, newest: int
    ) -> None:
        """After a full LIST: entries missing from it are dropped unless they are newer than all
        it held (a trial this controller created after the LIST's snapshot)."""

        def gone(ns: str, name: str, body: Mapping[str, Any]) -> bool:
            in_scope = namespace is None or ns == namespace
            return in_scope and (ns, name) not in seen and resource_version(body) <= newest

        if kind == "experiment":
            for key, body in list(self.experiments.items()):
                if gone(*key, body):
                    del self.experiments[key]
            return
        for exp_key, runs in list(self.trials.items()):
            for name, body in list(runs.items()):
                if gone(exp_key[0], name, body):
                    del runs[name]
            if not runs:
                del self.trials[exp_key]

    def trials_of(self, namespace: str, experiment: str) -> list[dict[str, Any]]:
        return list(self.trials.get((namespace, experiment), {}).values())


def fingerprint(exp: Mapping[str, Any], trials: Iterable[Mapping[str, Any]]) -> tuple[Any, ...]:
    """What a decision depends on: unchanged -> the pass skips the experiment."""
    return (
        resource_version(exp),
        tuple(sorted((object_key(t)[1], resource_version(t)) for t in trials)),
    )
