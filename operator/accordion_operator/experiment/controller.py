"""The Experiment controller: one loop that decides every Experiment whose observations changed
and executes the plans (create trial TrainingRuns, stop pruned ones, write status).

Watch events only copy objects into the cache (`experiment.cache`) and wake the loop. Each pass
takes the experiments whose observations changed from the cache on the event loop, decides them
off it (`decide.decide_all`, pure), then keeps its books (what was decided on, the pruners'
memos, the metrics) and executes the plans back on it. The trials are ordinary TrainingRuns: the
TrainingRun controller admits them through the same GPU allocator as any run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.experiment import Experiment
from accordion_operator.config import Config
from accordion_operator.core.cache import expected_syncs, run_watched
from accordion_operator.core.kube import Kube
from accordion_operator.core.objects import (
    EXPERIMENTS,
    TRAININGRUNS,
    object_key,
    object_ref,
)
from accordion_operator.experiment.cache import WATCHES, ExperimentCache, Key, fingerprint
from accordion_operator.experiment.decide import (
    Decision,
    ExperimentPlan,
    Observed,
    best_child,
    decide_all,
)
from accordion_operator.experiment.observe import ChildRun
from accordion_operator.experiment.search import RungMemo, max_trials
from accordion_operator.experiment.trials import stop_patch
from accordion_operator.metrics import OperatorMetrics

log = logging.getLogger("accordion.experiments")


@dataclass(frozen=True)
class Changed:
    """An experiment whose observations changed since it was last decided on."""

    key: Key
    fingerprint: tuple[Any, ...]
    observed: Observed


@dataclass
class ExperimentController:
    cfg: Config
    kube: Kube
    cache: ExperimentCache
    clock: Callable[[], float] = time.time
    #: fingerprints of the observations each experiment was last decided on
    seen: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    #: per experiment: the pruner's replay memo (search.build_study)
    memos: dict[Key, RungMemo] = field(default_factory=dict)
    passes: int = 0
    last_decide_seconds: float = 0.0
    #: Prometheus metrics (docs/metrics.md); None in tests that do not look at them
    metrics: OperatorMetrics | None = None
    #: experiments whose metrics are exported (to drop those of deleted experiments)
    exported: set[Key] = field(default_factory=set)

    def plans(self, now: float) -> list[tuple[Experiment | Mapping[str, Any], ExperimentPlan]]:
        """Decide every experiment whose observations changed and keep the books (no I/O; a
        pass runs the decisions off the event loop instead, see `reconcile_all`)."""
        changed = self.changed()
        return self.record(changed, decide_all([c.observed for c in changed], now))

    def changed(self) -> list[Changed]:
        """The experiments to decide, as the cache holds them now: decisions off the event loop
        read this snapshot while watch events go on changing the cache."""
        out: list[Changed] = []
        for key, body in self.cache.experiments.items():
            trials = self.cache.trials_of(*key)
            fp = fingerprint(body, trials)
            if self.seen.get(key) != fp:
                memo = dict(self.memos.get(key, {}))
                out.append(Changed(key, fp, Observed(body, tuple(trials), memo)))
        return out

    def record(
        self, changed: Sequence[Changed], decisions: Sequence[Decision]
    ) -> list[tuple[Experiment | Mapping[str, Any], ExperimentPlan]]:
        """The books of a pass's decisions: what each was decided on (not decided again until it
        changes), the rung values its rebuild replayed, its metrics; deleted ones are forgotten."""
        for c, d in zip(changed, decisions, strict=True):
            if not isinstance(d.target, Experiment):
                continue  # rejected by the models: decided on every pass (Failed is written once)
            self.seen[c.key] = c.fingerprint
            self.memos.setdefault(c.key, {}).update(d.plan.rungs)
            self.export_metrics(d.target, d.children, c.observed.trials)
        self.forget_deleted()
        return [(d.target, d.plan) for d in decisions]

    def forget_deleted(self) -> None:
        """Experiments gone from the cache: their fingerprints, memos and metric series."""
        live = self.cache.experiments
        for key in [k for k in self.seen if k not in live]:
            del self.seen[key]
        for key in [k for k in self.memos if k not in live]:
            del self.memos[key]
        for key in [k for k in self.exported if k not in live]:
            self.exported.discard(key)
            if self.metrics is not None:
                self.metrics.forget_experiment(*key)

    def export_metrics(
        self, exp: Experiment, children: Sequence[ChildRun], trials: Iterable[Mapping[str, Any]]
    ) -> None:
        """An Experiment's trials by state, its budget and best objective (docs/metrics.md),
        from the same observations its decision used. A trial still `Running` as far as the
        search is concerned is `Pending` until its run really runs (waiting for GPUs)."""
        if self.metrics is None:
            return
        phases = {object_key(t)[1]: (t.get("status") or {}).get("phase") for t in trials}
        states: dict[str, int] = {}
        for c in children:
            state: str = c.outcome
            if state == "Running" and phases.get(c.name) != "Running":
                state = "Pending"
            states[state] = states.get(state, 0) + 1
        best = best_child(children, exp.spec.objective.direction == "maximize")
        key = (exp.metadata.namespace, exp.metadata.name)
        self.metrics.set_experiment(
            *key,
            trials=states,
            max_trials=max_trials(exp.spec),
            best_objective=best.value if best is not None else None,
        )
        self.exported.add(key)

    async def reconcile_all(self) -> None:
        t0 = time.perf_counter()
        changed = self.changed()
        # Deciding can take a while (rebuilding a study of hundreds of trials): off the event
        # loop, so kopf's watches and the TrainingRun controller keep going meanwhile.
        observed = [c.observed for c in changed]
        decisions = await asyncio.to_thread(decide_all, observed, self.clock())
        plans = self.record(changed, decisions)
        self.last_decide_seconds = time.perf_counter() - t0
        await asyncio.gather(*(self._execute(e, p) for e, p in plans))
        self.passes += 1
        if self.metrics is not None:
            self.metrics.observe_reconcile("experiments", time.perf_counter() - t0, failed=False)

    async def _execute(self, exp: Experiment | Mapping[str, Any], plan: ExperimentPlan) -> None:
        if isinstance(exp, Experiment):
            ns, name, uid = exp.metadata.namespace, exp.metadata.name, exp.metadata.uid
        else:
            meta = exp.get("metadata") or {}
            ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        key = (ns, name)
        try:
            results = await asyncio.gather(*(self.kube.create(obj) for obj in plan.create))
            for obj, (code, data) in zip(plan.create, results, strict=True):
                if code in (200, 201):
                    self.cache.apply("run", "ADDED", data, wake=False)
                elif code != 409:  # AlreadyExists: a previous pass (or process) created it
                    msg = f"creating TrainingRun {obj['metadata']['name']}: {data.get('message')}"
                    log.warning("%s/%s: %s", ns, name, msg)
                    plan.events.append(("Warning", "CreateFailed", msg))
            for run, why in plan.stop:
                code, data = await self.kube.patch(TRAININGRUNS, ns, run, stop_patch(why))
                if code == 200:
                    self.cache.apply("run", "MODIFIED", data, wake=False)
                elif code != 404:
                    log.warning(
                        "%s/%s: stopping %s: %s %s", ns, name, run, code, data.get("message")
                    )
            # the Events before the status write that marks them said (core/events.py)
            ref = object_ref(EXPERIMENTS, ns, name, uid)
            for etype, reason, message in plan.events:
                await self.kube.event(ref, etype, reason, message)
            if plan.status_patch is not None:
                code, data = await self.kube.patch_status(EXPERIMENTS, ns, name, plan.status_patch)
                if code == 200:
                    self.cache.apply("experiment", "MODIFIED", data, wake=False)
                elif code != 404:
                    log.warning("%s/%s: status patch: %s %s", ns, name, code, data.get("message"))
            if plan.create or plan.stop:
                # our own writes changed the children: decide again on the next pass
                self.seen.pop(key, None)
        except Exception:  # one experiment's trouble must not stop the loop
            log.exception("reconciling experiment %s/%s failed; retrying", ns, name)
            self.seen.pop(key, None)

    async def run_forever(self, stop: asyncio.Event) -> None:
        await run_watched(self._loop(stop), self.kube, self.cache, WATCHES, stop)

    async def _loop(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        # Decide only on a complete view: with its trials not yet listed, every experiment
        # would look as if it had no runs yet.
        expected = expected_syncs(cfg, WATCHES)
        while not stop.is_set():
            try:
                self.cache.dirty.clear()
                if expected <= self.cache.synced:
                    await self.reconcile_all()
            except Exception:
                log.exception("experiment pass failed; retrying")
                if self.metrics is not None:
                    self.metrics.observe_reconcile("experiments", 0.0, failed=True)
                self.seen.clear()
            try:
                await asyncio.wait_for(self.cache.dirty.wait(), timeout=cfg.resync_seconds)
                await asyncio.sleep(cfg.debounce_seconds)  # batch a burst of events
            except TimeoutError:
                self.seen.clear()  # periodic full re-decision: the level-based safety net
