"""Experiments: thin kopf handlers, the cache they feed and the loop that acts on the plans.

Same shape as the TrainingRun side (`handlers` + `controller`): watch events only copy objects
into a cache and wake one loop; each pass runs the pure `decide_experiment` for every
Experiment whose observations changed and executes the plans (create child TrainingRuns, stop
pruned ones, write status). The children are ordinary TrainingRuns: the TrainingRun controller
admits them through the same GPU allocator as any run. Registered by importing this module
(`accordion_operator.__main__` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from accordion_operator import builders
from accordion_operator.api.common import API_VERSION, GROUP, VERSION
from accordion_operator.api.experiment import KIND, PLURAL, Experiment
from accordion_operator.api.trainingrun import PLURAL as RUN_PLURAL
from accordion_operator.config import Config
from accordion_operator.experiment_reconcile import (
    LABEL_EXPERIMENT,
    ChildRun,
    ExperimentPlan,
    best_child,
    decide_experiment,
    observe_child,
    stop_patch,
)
from accordion_operator.kube import ApiError, Kube
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.reconcile import to_rfc3339
from accordion_operator.search import RungMemo, max_trials

log = logging.getLogger("accordion.experiments")
CR_VERSION = f"{GROUP}/{VERSION}"
Key = tuple[str, str]


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


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
        ns, name = _key(body)
        if kind == "experiment":
            old = self.experiments.get((ns, name))
            if deleted:
                self.experiments.pop((ns, name), None)
            elif old is None or _rv(body) >= _rv(old):
                self.experiments[(ns, name)] = dict(body)
        else:
            exp = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_EXPERIMENT)
            if not exp:
                return
            runs = self.trials.setdefault((ns, exp), {})
            old = runs.get(name)
            if deleted:
                runs.pop(name, None)
            elif old is None or _rv(body) >= _rv(old):
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
        newest = max((_rv(i) for i in items), default=0)
        listed = {_key(i) for i in items}
        if kind == "experiment":
            for key, body in list(self.experiments.items()):
                if key not in listed and _rv(body) <= newest:
                    del self.experiments[key]
        else:
            for exp_key, runs in list(self.trials.items()):
                if namespace is not None and exp_key[0] != namespace:
                    continue
                for name, body in list(runs.items()):
                    if (exp_key[0], name) not in listed and _rv(body) <= newest:
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
    return (_rv(exp), tuple(sorted((_key(t)[1], _rv(t)) for t in trials)))


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
        phases = {_key(t)[1]: (t.get("status") or {}).get("phase") for t in trials}
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
                code, data = await self.kube._call(
                    "PATCH",
                    CR_VERSION,
                    f"{RUN_PLURAL}/{run}",
                    ns,
                    stop_patch(why),
                    content_type="application/merge-patch+json",
                )
                if code == 200:
                    self.cache.apply("run", "MODIFIED", data, wake=False)
                elif code != 404:
                    log.warning(
                        "%s/%s: stopping %s: %s %s", ns, name, run, code, data.get("message")
                    )
            if plan.status_patch is not None:
                code, data = await self.kube._call(
                    "PATCH",
                    CR_VERSION,
                    f"{PLURAL}/{name}/status",
                    ns,
                    {"status": plan.status_patch},
                    content_type="application/merge-patch+json",
                )
                if code == 200:
                    self.cache.apply("experiment", "MODIFIED", data, wake=False)
                elif code != 404:
                    log.warning("%s/%s: status patch: %s %s", ns, name, code, data.get("message"))
            for etype, reason, message in plan.events:
                await self.kube.create(
                    event_body(ns, name, uid, etype, reason, message, self.clock())
                )
            if plan.create or plan.stop:
                # our own writes changed the children: decide again on the next pass
                self.seen.pop(key, None)
        except Exception:  # one experiment's trouble must not stop the loop
            log.exception("reconciling experiment %s/%s failed; retrying", ns, name)
            self.seen.pop(key, None)

    async def seed(self) -> None:
        ns = self.cfg.namespaces
        self.cache.replace_all("experiment", await self.kube.list_all(CR_VERSION, PLURAL, ns))

    async def run_forever(self, stop: asyncio.Event) -> None:
        # Trial runs by our own LIST+WATCH with a server-side label selector, not kopf's: kopf
        # watches every TrainingRun and filters labels itself, a per-object worker for each of
        # 10,000 runs that are no experiment's.
        scopes: tuple[str | None, ...] = self.cfg.namespaces or (None,)
        watches = [
            asyncio.create_task(
                self.kube.list_watch(
                    TrialSink(self.cache, ns), CR_VERSION, RUN_PLURAL, ns, stop, LABEL_EXPERIMENT
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


def event_body(
    ns: str, name: str, uid: str, etype: str, reason: str, message: str, now: float
) -> dict[str, Any]:
    t = to_rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": ns},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": name,
            "namespace": ns,
            "uid": uid,
        },
        "type": etype,
        "reason": reason[:128],
        "message": message[:1024],
        "source": {"component": builders.MANAGED_BY},
        "reportingComponent": builders.MANAGED_BY,
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    }


# --- kopf handlers (thin) ------------------------------------------------------------------------


@kopf.on.startup()
async def start_experiments(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    cfg = Config.from_env()
    cache = ExperimentCache()
    # One registry for both controllers, whichever startup handler runs first (handlers.py).
    metrics: OperatorMetrics = memo.setdefault("metrics", OperatorMetrics())
    metrics.declare_handlers(["experiments"])
    ctl = ExperimentController(
        cfg, await Kube.connect(cfg, metrics, watches=False), cache, metrics=metrics
    )
    stop = asyncio.Event()
    memo.exp_cache, memo.exp_controller, memo.exp_stop = cache, ctl, stop
    memo.exp_task = asyncio.create_task(ctl.run_forever(stop), name="accordion-experiments")
    logger.info("experiment controller started")


@kopf.on.cleanup()
async def stop_experiments(memo: kopf.Memo, **_: Any) -> None:
    memo.exp_stop.set()
    memo.exp_cache.dirty.set()  # wake the idle loop now, not at its next resync
    task: asyncio.Task[None] = memo.exp_task
    try:
        await asyncio.wait_for(task, timeout=10)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
    await memo.exp_controller.kube.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_experiment(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.exp_cache.apply("experiment", event["type"], event["object"])
