"""Discrete-event replay of a job trace in simulated time (issue 20, part 3).

Four policies on the same trace:

* ``elastic``: Accordion as it is. Each job is a TrainingRun with ``min..max`` workers; the
  *real, pure* allocator (``decide_allocation``, through :func:`allocate`) decides the grants on
  every arrival and completion and at the operator's resync ticks, with its cooldown; a grant
  that changes a running job's size costs the model's pause (zero throughput).
* ``static-max`` / ``static-min``: the same allocator with ``min == max`` = the requested GPUs /
  the elastic minimum: gang admission, priority then FIFO with the allocator's best-effort
  backfill (a later job that fits starts while an earlier big one waits, with no reservation).
* ``fifo-easy``: a Kueue-style queue of static jobs at the requested size with EASY backfill
  (Lifka 1995; Mu'alem & Feitelson 2001): the head of the queue gets a reservation at the
  earliest time enough GPUs free up, and a later job starts now only if it fits and does not
  delay that reservation. It is given every job's exact run time (real EASY has user estimates,
  which only make it worse).

The real stack's delays (``SimConfig.start_delay_s``: a grant to the first step;
``release_delay_s``: a job's end to its GPUs being grantable again) are 0 unless set:
``benchmarks.elastic_replay`` measures them on the real operator and sets them.

GPUs are one pool of ``gpus / gpus_per_node`` nodes; every worker uses one GPU, so a job's
workers may span nodes (as the allocator plans them). Time is simulated; nothing sleeps.

Between two events every job's rate is constant, so work is integrated exactly. Three exact
shortcuts keep the 1,024-GPU replay in minutes; ``SimConfig`` switches each back to the slow
faithful way and the unit tests check they agree:

* the allocator's output depends on the clock only through the cooldown, so deciding at every
  resync tick equals deciding at the ticks where some run's cooldown has run out
  (``every_tick``);
* when every run's cap fits the cluster at once, the allocator grants each its cap (one-GPU
  workers, no placement constraints), so it is not asked (``always_allocate``);
* the runs' own pods are left out of its input: it re-plans them and never counts them as
  foreign load (``with_pods``).

The operator would follow a decision that changed grants with another pass; ``settle`` does that
(ask again at the same instant until nothing changes) and counts in ``repass_changes`` how often
the second answer differed: never, on the committed traces.
"""

from __future__ import annotations

import bisect
import heapq
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.trainingrun.allocator import (
    Node,
    PodUse,
    RunRequest,
    decide_allocation,
)
from benchmarks.elastic.speedup import ModelClass
from benchmarks.elastic.trace import Job

POLICIES = ("elastic", "static-max", "static-min", "fifo-easy")
NAMESPACE = "trace"


@dataclass(frozen=True)
class SimConfig:
    gpus: int
    gpus_per_node: int = 8
    #: the allocator's cooldown (the operator's default, ACCORDION_SCALE_COOLDOWN_SECONDS)
    cooldown: float = 30.0
    #: the operator's periodic re-decision
    tick: float = 30.0
    #: decide at every tick instead of only where a cooldown ran out (slow; for checking)
    every_tick: bool = False
    #: pass the runs' own pods to the allocator (it ignores them; slower; for checking)
    with_pods: bool = False
    #: after a decision that changed grants, ask again at the same instant until nothing
    #: changes, as the operator's next pass would (for checking: on the committed traces the
    #: second pass never changed a grant, ``repass_changes`` counts it)
    settle: bool = False
    #: call the allocator even when every run's cap fits (for checking the shortcut)
    always_allocate: bool = False
    #: override every class's pauses (sensitivity runs); None = the model's
    grow_pause_s: float | None = None
    shrink_pause_s: float | None = None
    #: seconds from the allocator's admitting a job to its first training step, with its GPUs
    #: held meanwhile: on the real stack the operator's pass, the pods' creation, scheduling and
    #: start, and the launcher's discovery (benchmarks.elastic_replay measures it; 0 = instant)
    start_delay_s: float = 0.0
    #: seconds from a job's end to its GPUs being granted again, held meanwhile: on the real
    #: stack the operator's noticing the launcher's exit, marking the run Succeeded and
    #: deleting its pods, which count as load until they are gone (0 = at once)
    release_delay_s: float = 0.0

    def nodes(self, held: int = 0) -> list[Node]:
        """The cluster's nodes, less ``held`` GPUs taken from the last nodes (those of ended
        jobs not yet released: with one-GPU workers, where they sit does not matter)."""
        full, rest = divmod(self.gpus, self.gpus_per_node)
        sizes = [self.gpus_per_node] * full + ([rest] if rest else [])
        for i in reversed(range(len(sizes))):
            take = min(held, sizes[i])
            sizes[i] -= take
            held -= take
        return [Node(f"node-{i:04d}", g) for i, g in enumerate(sizes)]


# --- the allocator, through one adapter ----------------------------------------------------------


@dataclass
class _Live:
    """A job that has arrived and not finished, under one policy."""

    job: Job
    lo: int
    hi: int
    cls: ModelClass
    #: speedups at 0..hi workers, and the rate reference S(requested)
    speedups: list[float]
    ref: float
    workers: int = 0
    started: float | None = None
    last_scale: float | None = None
    paused_until: float = 0.0
    done: float = 0.0
    rescales: int = 0
    grows: int = 0
    shrinks: int = 0
    preemptions: int = 0
    placements: dict[str, int] = field(default_factory=dict)
    #: (time, old, new) at every change of the grant
    changes: list[tuple[float, int, int]] = field(default_factory=list)
    key: str = ""
    uid: str = ""
    #: lazy accounting: ``done`` is exact at ``t_ref``; the rate, GPUs and busy share since then
    t_ref: float = 0.0
    cur_rate: float = 0.0
    cur_alloc: int = 0
    cur_busy: float = 0.0
    #: bumped on every change, so the heap's older entries for the job are skipped
    version: int = 0
    #: the allocator's view, rebuilt only when the grant or its time changed
    _request: RunRequest | None = None

    def __post_init__(self) -> None:
        self.key = f"{NAMESPACE}/job-{self.job.id:06d}"
        self.uid = f"uid-{self.job.id:06d}"

    def request(self) -> RunRequest:
        req = self._request
        if req is None or req.previous != self.workers or req.last_scale != self.last_scale:
            req = self._request = RunRequest(
                key=self.key,
                uid=self.uid,
                namespace=NAMESPACE,
                priority=0,
                created=self.job.arrival,
                min=self.lo,
                max=self.hi,
                requested=self.hi,
                gpus_per_worker=1,
                previous=self.workers,
                last_scale=self.last_scale,
            )
        return req

    def rate(self) -> float:
        """GPU-seconds of the job's work (at its requested size) done per second."""
        return self.job.request * self.speedups[self.workers] / self.ref

    def runtime_at(self, n: int) -> float:
        """Seconds the whole job takes at ``n`` workers, without pauses."""
        return self.job.duration * self.ref / self.speedups[n]


def allocate(
    nodes: Sequence[Node],
    live: Sequence[_Live],
    now: float,
    cooldown: float,
    *,
    with_pods: bool = False,
) -> tuple[dict[int, int], dict[int, dict[str, int]]]:
    """Grants (workers per job id) and planned placements from the real allocator.

    The one place that calls ``decide_allocation``: when it or ``RunRequest`` grow fields
    (quotas, namespaces), only this function follows. Every GPU pod of the simulated cluster is
    a run's worker, which the allocator re-plans from scratch and never counts as foreign load,
    so the pods are left out unless ``with_pods`` (a test checks both give the same grants).
    """
    runs = [lv.request() for lv in live]
    pods = (
        [
            PodUse(node, 1, run=lv.key, owner=lv.uid)
            for lv in live
            for node, count in lv.placements.items()
            for _ in range(count)
        ]
        if with_pods
        else []
    )
    alloc = decide_allocation(nodes, pods, runs, now, cooldown)
    capacity = {n.name: n.gpus for n in nodes}
    for name, used in alloc.node_used.items():
        if used > capacity[name]:
            raise AssertionError(f"allocator planned {used} GPUs on {name} of {capacity[name]}")
    grants, placements = {}, {}
    for lv in live:
        grants[lv.job.id] = alloc.grants[lv.key].workers
        placements[lv.job.id] = alloc.placements.get(lv.key, {})
    return grants, placements


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    id: int
    arrival: float
    start: float
    end: float
    max: int
    min: int
    model: str
    work: float
    #: work integrated by the simulator (equals ``work`` up to float rounding)
    done: float
    rescales: int
    grows: int
    shrinks: int
    preemptions: int

    @property
    def jct(self) -> float:
        return self.end - self.arrival

    @property
    def queued(self) -> float:
        return self.start - self.arrival


@dataclass
class SimResult:
    policy: str
    gpus: int
    jobs: list[JobRecord]
    #: (time, GPUs allocated, GPUs busy by the speedup model) from that time on
    timeline: list[tuple[float, int, float]]
    allocated_gpu_s: float
    busy_gpu_s: float
    max_allocated: int
    decisions: int
    #: follow-up passes at the same instant that changed grants again (the allocator is not
    #: always at a fixed point after one pass)
    repass_changes: int = 0
    #: decisions where every run's cap fitted, answered without the allocator
    trivial_decisions: int = 0
    #: per job id, (time, old, new) at every change of its grant (allocator policies)
    grant_changes: dict[int, list[tuple[float, int, int]]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        jcts = sorted(j.jct for j in self.jobs)
        makespan = max(j.end for j in self.jobs) - min(j.arrival for j in self.jobs)
        elastic = [j for j in self.jobs if j.max > j.min]
        return {
            "policy": self.policy,
            "jobs": len(self.jobs),
            "jct_avg_h": round(statistics.fmean(jcts) / 3600, 3),
            "jct_p50_h": round(percentile(jcts, 50) / 3600, 3),
            "jct_p95_h": round(percentile(jcts, 95) / 3600, 3),
            "makespan_h": round(makespan / 3600, 2),
            "queue_avg_h": round(statistics.fmean(j.queued for j in self.jobs) / 3600, 3),
            "util_allocated": round(self.allocated_gpu_s / (self.gpus * makespan), 4),
            "util_busy": round(self.busy_gpu_s / (self.gpus * makespan), 4),
            "rescales_per_job": round(statistics.fmean(j.rescales for j in self.jobs), 3),
            "rescales_per_elastic_job": (
                round(statistics.fmean(j.rescales for j in elastic), 3) if elastic else 0.0
            ),
            "preemptions": sum(j.preemptions for j in self.jobs),
            "decisions": self.decisions,
            "repass_changes": self.repass_changes,
            "trivial_decisions": self.trivial_decisions,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --- the simulations -----------------------------------------------------------------------------


def _bounds(job: Job, policy: str) -> tuple[int, int]:
    if policy == "elastic":
        return job.min, job.max
    if policy in ("static-max", "fifo-easy"):  # gang at the requested size
        return job.request, job.request
    if policy == "static-min":
        return job.min, job.min
    raise ValueError(f"unknown policy {policy!r}")


def _live(job: Job, policy: str, classes: Mapping[str, ModelClass], cfg: SimConfig) -> _Live:
    cls = classes[job.model]
    if cfg.grow_pause_s is not None or cfg.shrink_pause_s is not None:
        cls = ModelClass(
            cls.name,
            cls.alpha,
            cls.grow_pause_s if cfg.grow_pause_s is None else cfg.grow_pause_s,
            cls.shrink_pause_s if cfg.shrink_pause_s is None else cfg.shrink_pause_s,
        )
    lo, hi = _bounds(job, policy)
    return _Live(
        job=job,
        lo=lo,
        hi=hi,
        cls=cls,
        speedups=[cls.speedup(n) for n in range(max(hi, job.request) + 1)],
        ref=cls.speedup(job.request),
    )


Progress = Callable[[int, int], None]


def simulate(
    jobs: Sequence[Job],
    classes: Mapping[str, ModelClass],
    cfg: SimConfig,
    policy: str,
    progress: Progress | None = None,
) -> SimResult:
    if policy == "fifo-easy":
        return _simulate_easy(jobs, classes, cfg, progress)
    return _simulate_allocator(jobs, classes, cfg, policy, progress)


def _record(lv: _Live, end: float) -> JobRecord:
    assert lv.started is not None
    return JobRecord(
        id=lv.job.id,
        arrival=lv.job.arrival,
        start=lv.started,
        end=end,
        max=lv.hi,
        min=lv.lo,
        model=lv.job.model,
        work=lv.job.work,
        done=lv.done,
        rescales=lv.rescales,
        grows=lv.grows,
        shrinks=lv.shrinks,
        preemptions=lv.preemptions,
    )


def _simulate_allocator(
    jobs: Sequence[Job],
    classes: Mapping[str, ModelClass],
    cfg: SimConfig,
    policy: str,
    progress: Progress | None,
) -> SimResult:
    """Event-driven: each job's work is brought up to date only when its rate changes, and its
    completion or the end of its pause is an entry in one heap (stale entries carry an old
    ``version``), so an event costs O(jobs that changed), not O(live jobs)."""
    nodes = cfg.nodes()
    pending = sorted(jobs, key=lambda j: (j.arrival, j.id))
    nxt = 0  # next pending arrival
    live: dict[int, _Live] = {}
    done: list[JobRecord] = []
    changes: dict[int, list[tuple[float, int, int]]] = {}
    timeline: list[tuple[float, int, float]] = []
    heap: list[tuple[float, int, int, int]] = []  # (time, seq, job id, version)
    seq = 0
    t = 0.0
    alloc_s = busy_s = 0.0
    alloc_now, busy_now = 0, 0.0
    #: ended jobs whose GPUs are not released yet (release_delay_s): (when, job id, GPUs)
    releasing: list[tuple[float, int, int]] = []
    held = 0
    max_alloc = decisions = repass_changes = trivial = 0
    next_tick = math.inf
    inf = math.inf

    def retime(lv: _Live, now: float) -> None:
        """Bring the job's work up to ``now`` at its old rate, then apply its new state."""
        nonlocal alloc_now, busy_now, seq
        lv.done += lv.cur_rate * (now - lv.t_ref)
        lv.t_ref = now
        active = lv.workers > 0 and lv.paused_until <= now
        busy = lv.speedups[lv.workers] if active else 0.0
        alloc_now += lv.workers - lv.cur_alloc
        busy_now += busy - lv.cur_busy
        lv.cur_alloc, lv.cur_busy = lv.workers, busy
        lv.cur_rate = lv.rate() if active else 0.0
        lv.version += 1
        if lv.workers and not active:
            heapq.heappush(heap, (lv.paused_until, seq, lv.job.id, lv.version))
        elif active:
            when = now + max(0.0, lv.job.work - lv.done) / lv.cur_rate
            heapq.heappush(heap, (when, seq, lv.job.id, lv.version))
        seq += 1

    def decide(now: float) -> None:
        nonlocal decisions, max_alloc, repass_changes, trivial
        for attempt in range(4 if cfg.settle else 1):  # the operator's follow-up passes
            order = list(live.values())
            capacity = cfg.gpus - held
            if not cfg.always_allocate and sum(lv.hi for lv in order) <= capacity:
                # every run's cap fits at once: the allocator grants each its cap (exact for
                # one-GPU workers on unconstrained nodes; a test checks it against the allocator)
                grants = {lv.job.id: lv.hi for lv in order}
                placements: dict[int, dict[str, int]] = {}
                trivial += 1
            else:
                grants, placements = allocate(
                    cfg.nodes(held) if held else nodes,
                    order,
                    now,
                    cfg.cooldown,
                    with_pods=cfg.with_pods,
                )
                decisions += 1
            changed = False
            total = 0
            for lv in order:
                new, old = grants[lv.job.id], lv.workers
                total += new
                lv.placements = placements.get(lv.job.id, {}) if new else {}
                if new == old:
                    continue
                changed = True
                lv.last_scale = now
                lv.changes.append((now, old, new))
                if old == 0:
                    if lv.started is None:
                        lv.started = now + cfg.start_delay_s
                        lv.paused_until = lv.started
                    else:  # re-admitted after a preemption: as costly as a grow
                        lv.paused_until = now + lv.cls.grow_pause_s
                elif new == 0:
                    lv.preemptions += 1
                else:
                    lv.rescales += 1
                    if new > old:
                        lv.grows += 1
                        lv.paused_until = now + lv.cls.grow_pause_s
                    else:
                        lv.shrinks += 1
                        lv.paused_until = now + lv.cls.shrink_pause_s
                lv.workers = new
                retime(lv, now)
            if total > capacity:
                raise AssertionError(f"{total} GPUs granted on a cluster of {cfg.gpus}")
            max_alloc = max(max_alloc, total)
            if not changed:
                return
            if attempt:
                repass_changes += 1

    def schedule_tick(now: float) -> float:
        if cfg.every_tick:
            return (math.floor(now / cfg.tick) + 1) * cfg.tick
        # Exact shortcuts: when every run's cap fits at once, the cooldown cannot matter (one
        # GPU per worker fits any free GPU); otherwise the next tick at or after the first
        # cooldown end of a granted run.
        if sum(lv.hi for lv in live.values()) <= cfg.gpus - held:
            return inf
        ends = [
            lv.last_scale + cfg.cooldown
            for lv in live.values()
            if lv.workers and lv.last_scale is not None and lv.last_scale + cfg.cooldown > now
        ]
        if not ends:
            return inf
        tick = math.ceil(min(ends) / cfg.tick) * cfg.tick
        return tick if tick > now else tick + cfg.tick

    def fresh_top() -> float:
        while heap:
            _, _, jid, version = heap[0]
            lv = live.get(jid)
            if lv is not None and lv.version == version:
                return heap[0][0]
            heapq.heappop(heap)
        return inf

    while nxt < len(pending) or live:
        # the next instant anything changes: an arrival, a pause ending, a completion, a tick
        t_next = min(
            pending[nxt].arrival if nxt < len(pending) else inf,
            fresh_top(),
            next_tick,
            releasing[0][0] if releasing else inf,
        )
        if t_next == inf:
            raise AssertionError("jobs wait for GPUs that never free up (bigger than the cluster?)")
        dt = t_next - t
        alloc_s += alloc_now * dt
        busy_s += busy_now * dt
        t = t_next
        changed = False
        while nxt < len(pending) and pending[nxt].arrival <= t:
            job = pending[nxt]
            live[job.id] = _live(job, policy, classes, cfg)
            nxt += 1
            changed = True
        while heap and heap[0][0] <= t:
            _, _, jid, version = heapq.heappop(heap)
            lv = live.get(jid)
            if lv is None or lv.version != version:
                continue
            if lv.paused_until > lv.t_ref:  # its pause ended: back to work
                retime(lv, t)
                continue
            lv.done += lv.cur_rate * (t - lv.t_ref)
            lv.t_ref = t
            done.append(_record(lv, t))
            changes[jid] = lv.changes
            busy_now -= lv.cur_busy
            if cfg.release_delay_s > 0:  # allocated, idle, not grantable until released
                heapq.heappush(releasing, (t + cfg.release_delay_s, jid, lv.cur_alloc))
                held += lv.cur_alloc
            else:
                alloc_now -= lv.cur_alloc
            del live[jid]
            changed = True
            if progress:
                progress(len(done), len(pending))
        while releasing and releasing[0][0] <= t:
            _, _, gpus = heapq.heappop(releasing)
            held -= gpus
            alloc_now -= gpus
            changed = True
        if not live and not releasing:
            alloc_now, busy_now = 0, 0.0  # no float drift carried over an idle cluster
        if changed or t >= next_tick:
            decide(t)
            next_tick = schedule_tick(t)
        point = (t, alloc_now, round(busy_now, 9))
        if not timeline or timeline[-1][1:] != point[1:]:
            timeline.append(point)
    return SimResult(
        policy=policy,
        gpus=cfg.gpus,
        jobs=sorted(done, key=lambda r: r.id),
        timeline=timeline,
        allocated_gpu_s=alloc_s,
        busy_gpu_s=busy_s,
        max_allocated=max_alloc,
        decisions=decisions,
        repass_changes=repass_changes,
        trivial_decisions=trivial,
        grant_changes={r.id: changes[r.id] for r in done},
    )


def _simulate_easy(
    jobs: Sequence[Job],
    classes: Mapping[str, ModelClass],
    cfg: SimConfig,
    progress: Progress | None,
) -> SimResult:
    """FIFO with EASY backfill, static jobs at the requested size, exact run times."""
    pending = sorted(jobs, key=lambda j: (j.arrival, j.id))
    nxt = 0
    queue: list[_Live] = []
    #: running jobs as (end, id) sorted, and by id
    ends: list[tuple[float, int]] = []
    running: dict[int, _Live] = {}
    free = cfg.gpus
    done: list[JobRecord] = []
    timeline: list[tuple[float, int, float]] = []
    alloc_s = busy_s = 0.0
    max_alloc = 0
    t = 0.0

    def start(lv: _Live, now: float) -> None:
        nonlocal free, max_alloc
        lv.started, lv.workers = now, lv.hi
        free -= lv.hi
        if free < 0:
            raise AssertionError("EASY over-allocated")
        max_alloc = max(max_alloc, cfg.gpus - free)
        running[lv.job.id] = lv
        bisect.insort(ends, (now + lv.runtime_at(lv.hi), lv.job.id))

    def schedule(now: float) -> None:
        while queue and queue[0].hi <= free:
            start(queue.pop(0), now)
        if not queue:
            return
        head = queue[0]
        if head.hi > cfg.gpus:
            raise AssertionError(f"job {head.job.id} needs {head.hi} GPUs of {cfg.gpus}")
        # the head's reservation: when enough GPUs will be free, and how many spare then
        avail, shadow, extra = free, math.inf, 0
        for end, jid in ends:
            avail += running[jid].hi
            if avail >= head.hi:
                shadow, extra = end, avail - head.hi
                break
        for lv in list(queue[1:]):
            if lv.hi > free:
                continue
            finishes = now + lv.runtime_at(lv.hi)
            if finishes <= shadow:
                queue.remove(lv)
                start(lv, now)
            elif lv.hi <= extra:
                queue.remove(lv)
                start(lv, now)
                extra -= lv.hi

    while nxt < len(pending) or queue or running:
        t_next = min(
            pending[nxt].arrival if nxt < len(pending) else math.inf,
            ends[0][0] if ends else math.inf,
        )
        if t_next == math.inf:
            raise AssertionError("queued jobs can never start")
        dt = t_next - t
        if dt > 0:
            alloc_s += (cfg.gpus - free) * dt
            for lv in running.values():
                busy_s += lv.speedups[lv.workers] * dt
                lv.done += lv.rate() * dt
        t = t_next
        while ends and ends[0][0] <= t:
            _, jid = ends.pop(0)
            lv = running.pop(jid)
            free += lv.hi
            done.append(_record(lv, t))
            if progress:
                progress(len(done), len(pending))
        while nxt < len(pending) and pending[nxt].arrival <= t:
            queue.append(_live(pending[nxt], "fifo-easy", classes, cfg))
            nxt += 1
        schedule(t)
        allocated = cfg.gpus - free
        busy = sum(lv.speedups[lv.workers] for lv in running.values())
        if not timeline or timeline[-1][1:] != (allocated, busy):
            timeline.append((t, allocated, busy))
    return SimResult(
        policy="fifo-easy",
        gpus=cfg.gpus,
        jobs=sorted(done, key=lambda r: r.id),
        timeline=timeline,
        allocated_gpu_s=alloc_s,
        busy_gpu_s=busy_s,
        max_allocated=max_alloc,
        decisions=0,
    )
