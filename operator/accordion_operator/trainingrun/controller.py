"""The controller loop: one cluster-wide pass decides every run, then acts on the differences.

Why one loop rather than a kopf timer per run: the allocator must see all runs at once, and a
pass over 10,000 runs is a few tens of milliseconds of pure computation when nothing changed, so
one loop woken by any watch event (debounced) reacts within a second and costs nothing at rest.
A periodic pass (`ACCORDION_RESYNC_SECONDS`) is the level-based safety net, and a full re-LIST
every `ACCORDION_RELIST_SECONDS` repairs anything a watch might have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from accordion_operator.api.trainingrun import FINISHED_PHASES, TrainingRun, TrainingRunStatus
from accordion_operator.config import Config
from accordion_operator.core.cache import expected_syncs, run_watched, watch_all
from accordion_operator.core.kube import ApiError, Kube
from accordion_operator.core.objects import TRAININGRUNS, object_ref
from accordion_operator.core.timefmt import from_rfc3339
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.trainingrun import builders, priority
from accordion_operator.trainingrun.allocator import (
    GpuQuota,
    Grant,
    RunRequest,
    decide_allocation,
)
from accordion_operator.trainingrun.cache import (
    CORE_WATCHES,
    KUEUE_WATCHES,
    CachedRun,
    ClusterCache,
)
from accordion_operator.trainingrun.checks import check_run
from accordion_operator.trainingrun.decide import (
    NO_GRANT,
    OwnStatus,
    Plan,
    decide_run,
    unparsable_plan,
)
from accordion_operator.trainingrun.export import RunExport
from accordion_operator.trainingrun.identity import LauncherIdentities
from accordion_operator.trainingrun.kueue import (
    KUEUE_VERSION,
    KueueDecision,
    build_workload,
    decide_workloads,
    place_pod,
    queue_of,
)
from accordion_operator.trainingrun.observe import (
    Children,
    PodState,
    SecretInfo,
    controller_uid,
    orphan_of_ours,
    owned,
    wants_gpus,
)
from accordion_operator.trainingrun.preflight import Probe, probes_for
from accordion_operator.trainingrun.storage import PENDING, StoragePreflight

log = logging.getLogger("accordion.controller")
#: first wait after the apiserver refused a child pod; doubles per refusal, up to the max
CREATE_BACKOFF_S = 2.0
CREATE_BACKOFF_MAX_S = 300.0
#: how often a cluster without Kueue's API is asked again whether it serves it now
KUEUE_PROBE_S = 60.0


@dataclass(frozen=True)
class CreateFailure:
    """The apiserver's last refusal to create one of a run's children."""

    message: str
    #: refusals in a row
    count: int
    #: no creation is tried again before this time
    retry_at: float


@dataclass
class PassStats:
    runs: int = 0
    admitted: int = 0
    actions: int = 0
    decide_seconds: float = 0.0
    act_seconds: float = 0.0
    #: the pass ended early for runs created while it acted (cfg.pass_yield_seconds)
    yielded: bool = False


@dataclass
class _Tally:
    """What the decide loop of one pass did (PassStats' inputs)."""

    acted: int = 0
    decide_seconds: float = 0.0
    act_seconds: float = 0.0
    yielded: bool = False
    #: the requeue delays the plans asked for
    delays: list[float] = field(default_factory=list)


@dataclass
class Controller:
    cfg: Config
    kube: Kube
    cache: ClusterCache
    clock: Callable[[], float] = time.time
    #: run uids whose ssh Secret (and their namespace's launcher identity) this process ensured
    auth_done: set[str] = field(default_factory=set)
    #: the launchers' ServiceAccount, Role and RoleBinding, one each per namespace
    identities: LauncherIdentities = field(init=False)
    #: (namespace, secret) -> (checked at, info)
    secrets: dict[tuple[str, str], tuple[float, SecretInfo | None]] = field(default_factory=dict)
    secret_ttl: float = 10.0
    last: PassStats = field(default_factory=PassStats)
    #: Prometheus metrics (docs/metrics.md); None in tests that do not look at them
    metrics: OperatorMetrics | None = None
    #: what the passes and writes export to `metrics`
    export: RunExport | None = field(init=False, default=None)
    #: per run: the inputs of its last decision that had nothing to do, and until when that
    #: decision holds (its requeue time; inf without one) (see _decide_runs)
    _settled: dict[str, tuple[tuple[object, ...], float]] = field(default_factory=dict)
    #: per run not yet started: (resourceVersion and Secrets seen, check_run's verdict, the
    #: storage preflight's listings)
    _checks: dict[str, tuple[object, tuple[str, str] | None, tuple[Probe, ...]]] = field(
        default_factory=dict
    )
    #: the storage preflight (ACCORDION_STORAGE_PREFLIGHT); None = runs start unchecked
    storage: StoragePreflight | None = None
    #: per run: ((its version, the classes' and quotas' version), request at its class's
    #: priority, why its class or quota refuses it) (`_prioritised`)
    _resolved: dict[str, tuple[tuple[int, int], RunRequest, tuple[str, str] | None]] = field(
        default_factory=dict
    )
    #: (the cache's policy_version, the GPU quotas made of its ResourceQuotas) (`_gpu_quotas`)
    _quotas_seen: tuple[int, list[GpuQuota]] = field(default_factory=lambda: (-1, []))
    #: per run taking part in this pass's allocation: its priority (the order runs are acted on)
    _priorities: dict[str, int] = field(default_factory=dict)
    #: per run uid: the operator-owned status fields as this process last wrote (or first saw)
    #: them; the run's launcher token can write status too (`decide.OwnStatus`)
    _own: dict[str, OwnStatus] = field(default_factory=dict)
    passes: int = 0

    def __post_init__(self) -> None:
        self.identities = LauncherIdentities(self.kube, self.cfg)
        if self.metrics is not None:
            self.export = RunExport(self.metrics, self.clock)

    #: per run uid: the apiserver's last refusal of one of its Kueue Workloads (one Event each)
    _workload_refusals: dict[str, str] = field(default_factory=dict)
    #: per Kueue-admitted run: (the inputs of its last Kueue decision, that decision)
    _kueue_seen: dict[str, tuple[tuple[object, ...], KueueDecision]] = field(default_factory=dict)
    #: per run uid: the apiserver's last refusal to create one of its children
    _create_failures: dict[str, CreateFailure] = field(default_factory=dict)
    #: (namespace, pod, owner uid) of lookalike pods already reported
    _lookalikes: set[tuple[str, str, str]] = field(default_factory=set)

    async def _secrets_for(self, view: CachedRun, now: float) -> dict[str, SecretInfo | None]:
        out: dict[str, SecretInfo | None] = {}
        for name in view.secret_names:
            key = (view.namespace, name)
            hit = self.secrets.get(key)
            if hit is None or now - hit[0] > self.secret_ttl:
                found = await self.kube.secret_keys(*key)
                hit = (now, SecretInfo(*found) if found is not None else None)
                self.secrets[key] = hit
            out[name] = hit[1]
        return out

    async def reconcile_all(self) -> float | None:
        """One pass. Returns the earliest requeue delay any run asked for."""
        t0 = time.perf_counter()
        now = self.clock()
        cache = self.cache
        views = [v for v in list(cache.runs.values()) if v.invalid is None]
        invalid, requests, unread = await self._check_runs(views, now)
        if cache.terminating:
            requests = [r for r in requests if r.namespace not in cache.terminating]
        alloc = decide_allocation(
            list(cache.nodes.values()),
            list(cache.gpu_pods.values()),
            requests,
            now,
            self.cfg.scale_cooldown_seconds,
            quotas=self._gpu_quotas(),
            weights=cache.weights,
        )
        tally = _Tally(decide_seconds=time.perf_counter() - t0)
        if unread:
            tally.delays.append(self.cfg.debounce_seconds + 1.0)  # soon, not at the resync
        recheck = self.storage.due_in(now) if self.storage is not None else None
        if recheck is not None:
            tally.delays.append(recheck)
        decided = [v for v in views if v.key not in unread]
        await self._decide_runs(decided, alloc.grants, invalid, now, tally)
        # refused creations are tried again when their backoff ends (those of runs gone are
        # forgotten)
        uids = {v.uid for v in views}
        self._create_failures = {u: f for u, f in self._create_failures.items() if u in uids}
        if self._workload_refusals:  # usually empty
            self._workload_refusals = {
                u: m for u, m in self._workload_refusals.items() if u in uids
            }
        if len(self._own) > len(uids):
            self._own = {u: o for u, o in self._own.items() if u in uids}
        if len(self.auth_done) > len(uids):
            self.auth_done &= uids
        if self.identities.present:  # a namespace set per pass only where one may be idle
            idle = await self.identities.collect({v.namespace for v in cache.runs.values()}, now)
            if idle is not None:
                tally.delays.append(idle)
        tally.delays += [max(0.0, f.retry_at - now) for f in self._create_failures.values()]
        t = time.perf_counter()
        for view in list(cache.runs.values()):
            if view.invalid is not None:
                try:
                    await self._report_unparsable(view)
                except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("%s: reporting its invalid spec: %s; retrying", view.key, exc)
        tally.act_seconds += time.perf_counter() - t
        self.passes += 1
        if self.export is not None:
            self.export.after_pass(self.cache, time.perf_counter() - t0)
        self.last = PassStats(
            runs=len(views),
            admitted=sum(1 for g in alloc.grants.values() if g.admitted),
            actions=tally.acted,
            decide_seconds=tally.decide_seconds,
            act_seconds=tally.act_seconds,
            yielded=tally.yielded,
        )
        return min(tally.delays) if tally.delays else None

    async def _check_runs(
        self, views: list[CachedRun], now: float
    ) -> tuple[dict[str, tuple[str, str] | None], list[RunRequest], set[str]]:
        """check_run's verdict on each run (key -> (reason, message) or None), the allocation
        requests of the runs that want GPUs and passed, and the runs that could not be checked
        this pass (their Secrets could not be read, or their storage preflight has not answered
        yet): those are left as they are until the next."""
        invalid: dict[str, tuple[str, str] | None] = {}
        requests: list[RunRequest] = []
        #: Kueue admits these runs, not the allocator: only their priority is kept
        kueue_priorities: dict[str, int] = {}
        checks: dict[str, tuple[object, tuple[str, str] | None, tuple[Probe, ...]]] = {}
        unread: set[str] = set()
        for v in views:
            # Checked only before the run starts: afterwards the pods already hold what they need.
            if not v.started and v.phase not in FINISHED_PHASES:
                try:
                    secrets = await self._secrets_for(v, now)
                except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                    # One namespace's failing Secret read (a 5xx, a 403 from a namespace's
                    # admission webhook) must not stop the pass for every other run: this run
                    # waits, as it was, for the next pass.
                    log.warning("%s: reading its credentials Secrets: %s; retrying", v.key, exc)
                    unread.add(v.key)
                    continue
                seen = (v.resource_version, tuple(sorted(secrets.items())))
                check = self._checks.get(v.key)
                if check is None or check[0] != seen:
                    run = v.model()
                    check = (seen, check_run(run, secrets, self.cfg), probes_for(run, secrets))
                checks[v.key] = check
                invalid[v.key] = check[1]
                if check[1] is None and v.wants_gpus and self.storage is not None:
                    # The listings run in the background (storage.py): a run without an answer
                    # yet is not decided this pass, so no tenant's object store delays a pass.
                    found = self.storage.verdict(v.uid, check[2], now)
                    if found is PENDING:
                        unread.add(v.key)
                        continue
                    invalid[v.key] = found
            own = self._own.setdefault(v.uid, OwnStatus(v.phase, v.last_scale_time))
            wants = v.wants_gpus
            if own.phase != v.phase:  # a forged phase: decide as the operator last wrote it
                wants = own.phase not in FINISHED_PHASES and wants_gpus(
                    v.model().model_copy(update={"status": _phase_only(own.phase)})
                )
            if wants and v.request is not None and invalid.get(v.key) is None:
                request, verdict = self._prioritised(v, v.request)
                if own.last_scale_time != v.last_scale_time:  # a forged lastScaleTime
                    trusted = from_rfc3339(own.last_scale_time)
                    request = dataclasses.replace(request, last_scale=trusted)
                if verdict is not None and not v.started:
                    invalid[v.key] = verdict
                elif queue_of(v.labels) is not None:
                    # Their pods stay in the allocator's view as other pods' GPUs are: busy
                    # on their nodes and counted by their namespace's quotas, never twice.
                    kueue_priorities[v.key] = request.priority
                else:
                    requests.append(request)
        self._checks = checks
        if self.storage is not None:
            self.storage.sweep()
        self._priorities = {r.key: r.priority for r in requests} | kueue_priorities
        if len(self._resolved) > len(views) or len(self._kueue_seen) > len(views):  # runs gone
            keys = {v.key for v in views}
            self._resolved = {k: hit for k, hit in self._resolved.items() if k in keys}
            self._kueue_seen = {k: hit for k, hit in self._kueue_seen.items() if k in keys}
        return invalid, requests, unread

    def _prioritised(
        self, v: CachedRun, request: RunRequest
    ) -> tuple[RunRequest, tuple[str, str] | None]:
        """The run's allocation request at its PriorityClass's value, and why it may not be
        admitted (its class is missing, or a ResourceQuota can never admit its minimum).
        Cached per version of the run and of the classes and quotas: at 10,000 runs, a
        `dataclasses.replace` each pass would cost more than the allocation."""
        version = (v.rv, self.cache.policy_version)
        hit = self._resolved.get(v.key)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        verdict: tuple[str, str] | None = None
        got = priority.resolve(v.priority_class, self.cache.priority_classes)
        if isinstance(got, tuple):
            # A run that started keeps running when its class goes; it counts as priority 0.
            verdict, got = got, priority.Priority()
        else:
            verdict = priority.quota_refusal(
                list(self.cache.quotas.get(v.namespace, {}).values()),
                got.class_name,
                pods=1 + request.min,
                gpus=request.min * request.gpus_per_worker,
                gpu_resource=self.cfg.gpu_resource,
            )
        if (got.value, got.preempts, got.class_name) != (
            request.priority,
            request.preempts,
            request.priority_class,
        ):
            request = dataclasses.replace(
                request,
                priority=got.value,
                preempts=got.preempts,
                priority_class=got.class_name,
            )
        self._resolved[v.key] = (version, request, verdict)
        return request, verdict

    def _gpu_quotas(self) -> list[GpuQuota]:
        """The namespaces' GPU quotas as the allocator takes them, made again only when a
        quota's spec (or a PriorityClass) changed."""
        version = self.cache.policy_version
        if self._quotas_seen[0] != version:
            every = [q for quotas in self.cache.quotas.values() for q in quotas.values()]
            self._quotas_seen = (version, priority.gpu_quotas(every, self.cfg.gpu_resource))
        return self._quotas_seen[1]

    async def _decide_runs(
        self,
        views: list[CachedRun],
        grants: Mapping[str, Grant],
        invalid: Mapping[str, tuple[str, str] | None],
        now: float,
        tally: _Tally,
    ) -> None:
        """Decides the runs whose inputs changed and acts on the plans in batches, until done
        or until it yields to runs created meanwhile (`_yield_now`)."""
        overhead = tally.decide_seconds  # so far only the pass's fixed cost: checks, allocation
        settled: dict[str, tuple[tuple[object, ...], float]] = {}
        batch: list[tuple[TrainingRun, Plan]] = []
        ordered = self._decision_order(views)
        arrivals = self.cache.arrivals
        for i, v in enumerate(ordered):
            t = time.perf_counter()
            decided = await self._decide_one(v, grants, invalid, now, tally, settled)
            if decided is not None:
                batch.append(decided)
            tally.decide_seconds += time.perf_counter() - t
            if len(batch) >= self.cfg.batch_runs:
                tally.act_seconds += await self._act(batch)
                if self._yield_now(tally.act_seconds, overhead, arrivals):
                    # The rest keep their settled state and are decided next pass, with the
                    # newcomers (in creation order, before any status refresh).
                    for rest in ordered[i + 1 :]:
                        if rest.key in self._settled:
                            settled[rest.key] = self._settled[rest.key]
                    tally.yielded = True
                    tally.delays.append(0.0)
                    break
        tally.act_seconds += await self._act(batch)
        self._settled = settled

    def _decision_order(self, views: list[CachedRun]) -> list[CachedRun]:
        """Highest priority first, so that under load its pods are created first; within a
        priority, runs whose current spec was never acted on (new runs, `kubectl scale`) before
        the status refreshes of runs already decided: a burst of 10,000 arrivals otherwise
        waits behind thousands of "worker became ready" updates."""
        prio = self._priorities
        return sorted(views, key=lambda v: (-prio.get(v.key, 0), v.decided, v.created))

    async def _decide_one(
        self,
        v: CachedRun,
        grants: Mapping[str, Grant],
        invalid: Mapping[str, tuple[str, str] | None],
        now: float,
        tally: _Tally,
        settled: dict[str, tuple[tuple[object, ...], float]],
    ) -> tuple[TrainingRun, Plan] | None:
        """One run's plan when it has work; None when its decision holds (noted in `settled`)
        or it waits for Kueue's Workloads to be listed."""
        grant, verdict = grants.get(v.key, NO_GRANT), invalid.get(v.key)
        pods, lookalikes = owned(self.cache.pods_of(v.namespace, v.name), v.uid)
        if lookalikes:
            await self._report_lookalikes(v, lookalikes)
        failure = self._create_failures.get(v.uid)
        refused = failure.message if failure is not None else ""
        kueued: KueueDecision | None = None
        if queue_of(v.labels) is not None:
            if not self._kueue_known():
                # Kueue's Workloads not listed yet: this run waits, as it was
                if v.key in self._settled:
                    settled[v.key] = self._settled[v.key]
                return None
            kueued = self._kueue_decision(v, verdict)
            grant = kueued.grant
        elif (v.namespace, v.name) in self.cache.kueue.workloads:
            # the label was removed: the allocator has the run now, and Kueue's quota goes
            kueued = self._kueue_leftovers(v)
        inputs = (
            v.resource_version,
            tuple(sorted(pods, key=lambda p: p.name)),
            grant,
            verdict,
            refused,
            kueued,
        )
        # decide_run is a pure function of these inputs (and of time only through the requeue
        # it asks for): a run whose inputs did not change since its last no-op decision needs
        # no new one before that time. This keeps a pass at 10,000 quiet runs cheap (each
        # running one asks to be checked at its progress deadline).
        hit = self._settled.get(v.key)
        if hit is not None and hit[0] == inputs and now < hit[1]:
            settled[v.key] = hit
            if hit[1] != math.inf:
                tally.delays.append(hit[1] - now)
            return None
        run = v.model()
        children = Children(pods, auth_ready=v.uid in self.auth_done, create_error=refused)
        plan = decide_run(
            run, children, grant, invalid=verdict, cfg=self.cfg, now=now, own=self._own.get(v.uid)
        )
        if kueued is not None:
            self._kueue_plan(run, plan, kueued)
        if plan.requeue_after is not None:
            tally.delays.append(plan.requeue_after)
        if _has_work(plan):
            tally.acted += 1
            return run, plan
        due = now + plan.requeue_after if plan.requeue_after is not None else math.inf
        settled[v.key] = (inputs, due)
        return None

    def _kueue_known(self) -> bool:
        """Whether the cluster's answer on Kueue is in: its API is not served, or it is and
        the Workloads and ResourceFlavors have been listed."""
        served = self.cache.kueue.served
        return served is False or (
            served is True and expected_syncs(self.cfg, KUEUE_WATCHES) <= self.cache.synced
        )

    def _kueue_decision(self, v: CachedRun, verdict: tuple[str, str] | None) -> KueueDecision:
        """The run's Kueue decision, made again only when the run, its Workloads or the
        flavors changed (parsing each Kueue run every pass would cost more than deciding)."""
        store = self.cache.kueue
        workloads = store.of_run(v.namespace, v.name, v.uid)
        # a namespace being deleted takes no new pods: its runs are going too (as for the
        # allocator's runs, `reconcile_all`)
        active = v.wants_gpus and verdict is None and v.namespace not in self.cache.terminating
        key = (v.rv, workloads, store.served, store.flavors_version, active)
        hit = self._kueue_seen.get(v.key)
        if hit is not None and hit[0] == key:
            return hit[1]
        decision = decide_workloads(
            v.model(), workloads, store.flavors, served=bool(store.served), active=active
        )
        self._kueue_seen[v.key] = (key, decision)
        return decision

    def _kueue_leftovers(self, v: CachedRun) -> KueueDecision | None:
        """The Workloads of a run no longer labelled for Kueue, to delete (None: none)."""
        gone = tuple(
            w.name for w in self.cache.kueue.of_run(v.namespace, v.name, v.uid) if not w.deleting
        )
        return KueueDecision(NO_GRANT, delete=gone) if gone else None

    def _kueue_plan(self, run: TrainingRun, plan: Plan, kueued: KueueDecision) -> None:
        """A Kueue-admitted run's plan: its pods on the flavors Kueue assigned, and the
        Workloads to create and delete."""
        plan.create = [place_pod(o, kueued) for o in plan.create]
        priority = self._priorities.get(run.key)
        plan.workloads_create = [build_workload(run, self.cfg, s, priority) for s in kueued.create]
        plan.workloads_delete = list(kueued.delete)

    async def _write_workloads(self, run: TrainingRun, plan: Plan) -> None:
        """Create and delete the plan's Workloads; a refusal becomes a Warning Event, once per
        distinct refusal (the next pass, woken by the Workload watch or the resync, tries
        again)."""
        ns, uid = run.metadata.namespace, run.metadata.uid
        for body in plan.workloads_create:
            code, data = await self.kube.request("POST", KUEUE_VERSION, "workloads", ns, body)
            if code in (200, 201):
                self.cache.apply("workload", "ADDED", data, wake=False)
                self._workload_refusals.pop(uid, None)
            elif code != 409:  # 409: made by an earlier pass (names are deterministic)
                name = body["metadata"]["name"]
                msg = f"creating Kueue Workload {name}: {code} {data.get('message')}"[:1024]
                if self._workload_refusals.get(uid) != msg:
                    self._workload_refusals[uid] = msg
                    log.warning("%s: %s", run.key, msg)
                    plan.events.append(("Warning", "WorkloadCreateFailed", msg))
        for name in plan.workloads_delete:
            code, data = await self.kube.request("DELETE", KUEUE_VERSION, f"workloads/{name}", ns)
            if code not in (200, 202, 404):
                log.warning("%s: deleting Workload %s: %s", run.key, name, data.get("message"))

    async def _watch_kueue(self, stop: asyncio.Event) -> None:
        """Whether the cluster serves Kueue's API (asked again every KUEUE_PROBE_S while it
        does not), and once it does, the watches of the Workloads and ResourceFlavors. A
        cluster without Kueue is a normal cluster: runs labelled for Kueue are told so."""
        while not stop.is_set():
            served = await self._kueue_served()
            if served is not None and served != self.cache.kueue.served:
                log.info("Kueue's API (%s) %s", KUEUE_VERSION, "found" if served else "absent")
                self.cache.kueue.served = served
                self.cache.dirty.set()
            if served:
                await watch_all(self.kube, self.cache, KUEUE_WATCHES, stop)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), KUEUE_PROBE_S if served is False else 2.0)

    async def _kueue_served(self) -> bool | None:
        """True when Workloads can be listed, False when the API is not there (404) or the
        operator may not read it (403: the chart's RBAC predates Kueue), None on other
        trouble (asked again shortly)."""
        scope = KUEUE_WATCHES[0].scopes(self.cfg)[0]
        try:
            async for _ in self.kube.list_pages(KUEUE_VERSION, "workloads", scope, limit=1):
                break  # one page answers the question
        except ApiError as exc:
            if exc.code in (403, 404):
                if exc.code == 403:
                    log.warning("Kueue's Workloads may not be listed: %s", exc)
                return False
            log.warning("probing Kueue's API: %s; retrying", exc)
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("probing Kueue's API: %s; retrying", exc)
            return None
        return True

    async def _report_lookalikes(self, view: CachedRun, pods: list[PodState]) -> None:
        """A Warning Event, once per pod, for pods that carry a run's labels but whose controller
        is not the run: they are not counted as its launcher or workers."""
        for pod in pods:
            key = (view.namespace, pod.name, pod.owner_uid)
            if key in self._lookalikes:
                continue
            self._lookalikes.add(key)
            log.warning("%s: pod %s is not controlled by the run; ignored", view.key, pod.name)
            ref = object_ref(TRAININGRUNS, view.namespace, view.name, view.uid)
            await self.kube.event(
                ref,
                "Warning",
                "IgnoredPod",
                f"pod {pod.name} carries this run's labels but its controller is not this run "
                "(created by someone else, or left by a deleted run of the same name): it is "
                "not counted as the run's launcher or worker",
            )

    async def _act(self, batch: list[tuple[TrainingRun, Plan]]) -> float:
        """Executes a batch of plans and empties it; returns the seconds it took. Acting in
        batches bounds the memory of a pass (10,000 new runs would otherwise hold 10,000 plans
        with their pod bodies) and lets the first pods start sooner."""
        t = time.perf_counter()
        await asyncio.gather(*(self._execute(r, p) for r, p in batch))
        batch.clear()
        return time.perf_counter() - t

    def _yield_now(self, acted: float, overhead: float, arrivals: int) -> bool:
        """Whether a pass should end early: runs were created since it began (`arrivals` was
        the count then) and it has acted for `pass_yield_seconds`, and for at least 4 times its
        own fixed cost (`overhead`: checks and allocation over all runs, which the next pass
        pays again). A pass over 10,000 new runs acts for minutes on a busy apiserver, and runs
        created during it would wait until it ends; yielding after every batch, though, spent
        a third of the operator's time re-deciding (benchmarks, docs/trainingrun.md)."""
        limit = self.cfg.pass_yield_seconds
        return limit > 0 and acted >= max(limit, 4 * overhead) and self.cache.arrivals != arrivals

    async def _report_unparsable(self, view: CachedRun) -> None:
        """A run whose spec the models reject (e.g. a hyperparameter that is an object)."""
        assert view.invalid is not None
        body = view.body()
        plan = unparsable_plan(body, view.invalid, self.clock())
        if plan is None:
            return
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        # Events before the status that marks them said (core/events.py: at least once, named)
        ref = object_ref(TRAININGRUNS, ns, name, meta.get("uid", ""))
        for etype, reason, message in plan.events:
            await self.kube.event(ref, etype, reason, message)
        if plan.status_patch is not None:
            await self._patch_status(f"{ns}/{name}", ns, name, plan.status_patch)

    def _remember_own(self, uid: str, patch: Mapping[str, Any]) -> None:
        """After a status write: the operator-owned fields it set are the trusted ones now."""
        own = self._own.get(uid)
        if own is None:
            return
        phase = patch.get("phase", own.phase)
        last_scale = patch.get("lastScaleTime", own.last_scale_time)
        self._own[uid] = OwnStatus(str(phase), last_scale)

    async def _patch_status(
        self, key: str, ns: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Writes a status patch and takes the answer into the cache; the run as written, or
        None when the write failed (a run deleted meanwhile, 404, needs no retry)."""
        code, data = await self.kube.patch_status(TRAININGRUNS, ns, name, patch)
        if code == 200:
            self.cache.apply("run", "MODIFIED", data, wake=False)
            return data
        if code != 404:
            log.warning("%s: status patch: %s %s", key, code, data.get("message"))
        return None

    async def _execute(self, run: TrainingRun, plan: Plan) -> None:
        ns, name = run.metadata.namespace, run.metadata.name
        # failed pods this plan replaces, for the metrics: the deletions drop them from the cache
        replaced = [
            p
            for p in self.cache.pods_of(ns, name)
            if p.phase == "Failed" and p.name in plan.delete_pods
        ]
        try:
            if plan.delete_run:
                code, data = await self.kube.delete(TRAININGRUNS, ns, name)
                log.info("TTL after finish: deleted %s (%s)", run.key, code)
                return
            if plan.ensure_auth and plan.create:
                await self._ensure_auth(run, any(map(builders.mounts_ssh_secret, plan.create)))
            await self._create_children(run, plan)
            if plan.workloads_create or plan.workloads_delete:
                await self._write_workloads(run, plan)
            deletions = await asyncio.gather(
                *(self.kube.delete_pod(ns, p) for p in plan.delete_pods)
            )
            for pod, (code, data) in zip(plan.delete_pods, deletions, strict=True):
                if code in (200, 202) and data.get("kind") == "Pod":
                    self.cache.apply("pod", "MODIFIED", data, wake=False)
                elif code not in (200, 202, 404):
                    log.warning("%s: deleting pod %s: %s", run.key, pod, data.get("message"))
            # the Events first: the status write marks them said, and a process killed between
            # the two must leave them to be said again, not lost (core/events.py)
            ref = object_ref(TRAININGRUNS, ns, name, run.metadata.uid)
            for etype, reason, message in plan.events:
                await self.kube.event(ref, etype, reason, message)
            if plan.status_patch is not None:
                written = await self._patch_status(run.key, ns, name, plan.status_patch)
                if written is not None:
                    self._remember_own(run.metadata.uid, plan.status_patch)
                if written is not None and self.export is not None:
                    status = written.get("status") or {}
                    self.export.after_write(run, plan, status, replaced)
        except Exception:  # never let one run's trouble stop the loop
            log.exception("reconciling %s failed; retrying on the next pass", run.key)

    async def _create_children(self, run: TrainingRun, plan: Plan) -> None:
        """Create the plan's pods, unless the apiserver refused them recently: then wait out an
        exponential backoff (a namespace that refuses every pod is not asked again each pass).
        One Warning Event per distinct refusal; the refusal reaches the run's Running condition
        through the next decision (`Children.create_error`)."""
        uid, now = run.metadata.uid, self.clock()
        failure = self._create_failures.get(uid)
        if not plan.create or (failure is not None and now < failure.retry_at):
            return
        results = await asyncio.gather(*(self.kube.create(o) for o in plan.create))
        refused = ""
        for obj, (code, data) in zip(plan.create, results, strict=True):
            if code in (200, 201):
                self.cache.apply("pod", "ADDED", data, wake=False)
            elif code == 409:  # each one: an orphan holding a name is removed
                taken = await self._name_taken(run, obj)
                refused = refused or taken
            else:
                what = f"{obj['kind']} {obj['metadata']['name']}"
                refused = refused or f"creating {what}: {code} {data.get('message')}"
        if not refused:
            self._create_failures.pop(uid, None)
            return
        count = failure.count + 1 if failure is not None else 1
        delay = min(CREATE_BACKOFF_S * 2 ** (count - 1), CREATE_BACKOFF_MAX_S)
        self._create_failures[uid] = CreateFailure(refused, count, now + delay)
        if failure is None or failure.message != refused:
            log.warning("%s: %s", run.key, refused)
            plan.events.append(("Warning", "CreateFailed", refused))

    async def _name_taken(self, run: TrainingRun, obj: Mapping[str, Any]) -> str:
        """ "" when a 409 is our own pod from an earlier pass (names are deterministic), else why
        the run cannot have its pod: another controller's pod holds the name."""
        if obj["kind"] != "Pod":
            return ""
        ns, name = run.metadata.namespace, obj["metadata"]["name"]
        code, data = await self.kube.request("GET", "v1", f"pods/{name}", ns)
        meta = data.get("metadata") or {}
        if code != 200 or controller_uid(meta) == run.metadata.uid:
            return ""
        if orphan_of_ours(meta):
            # left by a deleted run of this name (`kubectl delete --cascade=orphan`): its pods
            # carry our labels and no controller any more; they must not block the new run
            await self.kube.delete_pod(ns, name)
            return f"pod {name}, left by a deleted run of the same name, is being removed"
        return (
            f"pod {name} exists and is not controlled by this run (a pod left by a deleted run "
            "of the same name, or created by someone else): delete it, or re-create the run "
            "under another name"
        )

    async def _ensure_auth(self, run: TrainingRun, ssh: bool) -> None:
        """The namespace's launcher identity and, when a pod to create mounts it (`ssh`), the
        run's ssh Secret, before the pods. Only once both exist is the run's auth done: a
        launcher alone in its run (builders.alone) makes its key itself, and re-ensures the
        identity (known to exist: no write) at each creation."""
        ns = run.metadata.namespace
        if not ssh:
            await self.identities.ensure(ns)
            return
        secret = builders.build_ssh_secret(run, self.cfg, builders.new_ssh_keypair())
        (code, data), _ = await asyncio.gather(self.kube.create(secret), self.identities.ensure(ns))
        if code not in (200, 201, 409):
            raise RuntimeError(
                f"creating the ssh Secret of {run.key}: {code} {data.get('message')}"
            )
        self.auth_done.add(run.metadata.uid)

    async def run_forever(self, stop: asyncio.Event) -> None:
        await self.identities.discover()
        kueue = asyncio.create_task(self._watch_kueue(stop), name="kueue")
        try:
            await run_watched(self._loop(stop), self.kube, self.cache, CORE_WATCHES, stop)
        finally:
            kueue.cancel()
            await asyncio.gather(kueue, return_exceptions=True)

    async def _loop(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        expected = expected_syncs(self.cfg, CORE_WATCHES)
        # Act only on a complete view: a run seen before its pods would get duplicate creations
        # refused by name, but an incomplete view of the GPU pods could over-admit.
        while not stop.is_set() and not expected <= self.cache.synced:
            self.cache.dirty.clear()  # the first pass below runs regardless
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cache.dirty.wait(), 1.0)
        while not stop.is_set():
            try:
                self.cache.dirty.clear()
                requeue = await self.reconcile_all()
                s = self.last
                if s.actions:
                    log.info(
                        "pass %d: %d runs, %d admitted, %d acted on; decide %.3f s, act %.3f s%s",
                        self.passes,
                        s.runs,
                        s.admitted,
                        s.actions,
                        s.decide_seconds,
                        s.act_seconds,
                        "; yielded to runs created meanwhile" if s.yielded else "",
                    )
            except Exception:
                log.exception("controller pass failed; retrying")
                if self.metrics is not None:
                    self.metrics.observe_reconcile("trainingruns", 0.0, failed=True)
                requeue = 1.0
            timeout = cfg.resync_seconds if requeue is None else min(cfg.resync_seconds, requeue)
            try:
                await asyncio.wait_for(self.cache.dirty.wait(), timeout=max(0.05, timeout))
                await asyncio.sleep(cfg.debounce_seconds)  # batch a burst of events
            except TimeoutError:
                pass


def _has_work(plan: Plan) -> bool:
    return bool(
        plan.create
        or plan.delete_pods
        or plan.status_patch is not None
        or plan.events
        or plan.delete_run
        or plan.workloads_create
        or plan.workloads_delete
    )


def _phase_only(phase: str) -> TrainingRunStatus:
    """A status with only `phase`, to ask whether a run in that phase wants GPUs."""
    return TrainingRunStatus.model_validate({"phase": phase})
