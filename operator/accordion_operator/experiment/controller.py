"""The Experiment controller: one loop that decides every Experiment whose observations changed
and executes the plans (create trial TrainingRuns, stop pruned ones, write status).

Watch events only copy objects into the cache (`experiment.cache`) and wake the loop; each pass
runs the pure `decide_experiment` off the event loop. The trials are ordinary TrainingRuns: the
TrainingRun controller admits them through the same GPU allocator as any run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.common import API_VERSION
from accordion_operator.api.experiment import KIND, PLURAL, Experiment
from accordion_operator.api.trainingrun import PLURAL as RUN_PLURAL
from accordion_operator.config import Config
from accordion_operator.core.kube import ApiError, Kube
from accordion_operator.core.objects import (
    EXPERIMENTS,
    LABEL_EXPERIMENT,
    TRAININGRUNS,
    object_key,
    object_ref,
)
from accordion_operator.core.timefmt import to_rfc3339
from accordion_operator.experiment.cache import ExperimentCache, Key, TrialSink, fingerprint
from accordion_operator.experiment.decide import ExperimentPlan, best_child, decide_experiment
from accordion_operator.experiment.observe import ChildRun, observe_child
from accordion_operator.experiment.search import RungMemo, max_trials
from accordion_operator.experiment.trials import stop_patch
from accordion_operator.metrics import OperatorMetrics

log = logging.getLogger("accordion.experiments")


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
        """Decide every experiment whose observations changed (pure, no I/O)."""
        out: list[tuple[Experiment | Mapping[str, Any], ExperimentPlan]] = []
        for key, body in list(self.cache.experiments.items()):
            trials = self.cache.trials_of(*key)
            fp = fingerprint(body, trials)
            if self.seen.get(key) == fp:
                continue
            try:
                exp = Experiment.model_validate(body)
            except ValueError as exc:
                out.append((body, invalid_plan(body, str(exc).splitlines()[:3], now)))
                continue
            uid = exp.metadata.uid
            children = [
                c
                for t in trials
                if _owned_by(t, uid)
                and (c := observe_child(t, exp.metadata.name, exp.spec.objective.metric))
                is not None
            ]
            memo = self.memos.setdefault(key, {})
            out.append((exp, decide_experiment(exp, children, now, memo)))
            self.seen[key] = fp
            self.export_metrics(exp, children, trials)
        for key in list(self.seen):
            if key not in self.cache.experiments:
                del self.seen[key]
        for key in list(self.memos):
            if key not in self.cache.experiments:
                del self.memos[key]
        for key in list(self.exported):
            if key not in self.cache.experiments:
                self.exported.discard(key)
                if self.metrics is not None:
                    self.metrics.forget_experiment(*key)
        return out

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
        # Deciding can take a while (rebuilding a study of hundreds of trials): off the event
        # loop, so kopf's watches and the TrainingRun controller keep going meanwhile.
        plans = await asyncio.to_thread(self.plans, self.clock())
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
            if plan.status_patch is not None:
                code, data = await self.kube.patch_status(EXPERIMENTS, ns, name, plan.status_patch)
                if code == 200:
                    self.cache.apply("experiment", "MODIFIED", data, wake=False)
                elif code != 404:
                    log.warning("%s/%s: status patch: %s %s", ns, name, code, data.get("message"))
            ref = object_ref(EXPERIMENTS, ns, name, uid)
            for etype, reason, message in plan.events:
                await self.kube.event(ref, etype, reason, message)
            if plan.create or plan.stop:
                # our own writes changed the children: decide again on the next pass
                self.seen.pop(key, None)
        except Exception:  # one experiment's trouble must not stop the loop
            log.exception("reconciling experiment %s/%s failed; retrying", ns, name)
            self.seen.pop(key, None)

    async def seed(self) -> None:
        ns = self.cfg.namespaces
        self.cache.replace_all("experiment", await self.kube.list_all(API_VERSION, PLURAL, ns))

    async def run_forever(self, stop: asyncio.Event) -> None:
        # Trial runs by our own LIST+WATCH with a server-side label selector, not kopf's: kopf
        # watches every TrainingRun and filters labels itself, a per-object worker for each of
        # 10,000 runs that are no experiment's.
        scopes: tuple[str | None, ...] = self.cfg.namespaces or (None,)
        watches = [
            asyncio.create_task(
                self.kube.list_watch(
                    TrialSink(self.cache, ns), API_VERSION, RUN_PLURAL, ns, stop, LABEL_EXPERIMENT
                ),
                name=f"watch-trials-{ns or 'all'}",
            )
            for ns in scopes
        ]
        try:
            await self._loop(stop, {ns or "" for ns in scopes})
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _loop(self, stop: asyncio.Event, scopes: set[str]) -> None:
        cfg = self.cfg
        last_list: float | None = None
        while not stop.is_set():
            try:
                if last_list is None or time.monotonic() - last_list > cfg.relist_seconds:
                    await self.seed()  # also retried until the CRD exists
                    last_list = time.monotonic()
                self.cache.dirty.clear()
                # Decide only once the trials are known: with none seen, every experiment
                # would look as if it had no runs yet.
                if scopes <= self.cache.trials_listed:
                    await self.reconcile_all()
            except Exception as e:
                if isinstance(e, ApiError) and e.transient:  # e.g. the CRD just installed
                    log.warning("experiment pass: %s; retrying", e)
                else:
                    log.exception("experiment pass failed; retrying")
                if self.metrics is not None:
                    self.metrics.observe_reconcile("experiments", 0.0, failed=True)
                self.seen.clear()
            try:
                await asyncio.wait_for(self.cache.dirty.wait(), timeout=cfg.resync_seconds)
                await asyncio.sleep(cfg.debounce_seconds)  # batch a burst of events
            except TimeoutError:
                self.seen.clear()  # periodic full re-decision: the level-based safety net


def _owned_by(body: Mapping[str, Any], uid: str) -> bool:
    """Only the experiment's own children count (a run labelled by hand does not)."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid and r.get("kind") == KIND for r in refs)


def invalid_plan(body: Mapping[str, Any], errors: list[str], now: float) -> ExperimentPlan:
    """An Experiment the models reject (something the schema let through): Failed, once."""
    status = body.get("status") or {}
    message = "invalid spec: " + "; ".join(errors)
    if status.get("phase") == "Failed":
        return ExperimentPlan()
    t = to_rfc3339(now)
    gen = (body.get("metadata") or {}).get("generation", 0)
    cond = {
        "type": "Failed",
        "status": "True",
        "reason": "InvalidSpec",
        "message": message[:1024],
        "lastTransitionTime": t,
        "observedGeneration": gen,
    }
    return ExperimentPlan(
        status_patch={
            "phase": "Failed",
            "conditions": [cond],
            "message": message[:256],
            "observedGeneration": gen,
        },
        events=[("Warning", "InvalidSpec", message)],
    )


def trial_streams(cfg: Config) -> int:
    """How many watch streams the Experiment controller keeps open (trial runs, per scope)."""
    return max(1, len(cfg.namespaces))
