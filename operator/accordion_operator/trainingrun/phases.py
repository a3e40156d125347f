"""The phases of deciding an admitted TrainingRun (pure), each a function of typed inputs to a
typed result: the launcher's lifecycle and the workers' failures (either may finish the run),
the children to create and delete (launcher, replacements of ended workers, scaling to the
grant), the below-minimum deadline and the Running condition. `running` runs them in order;
`decide.decide_run` turns the result into a plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from accordion_operator.api.trainingrun import (
    COND_FAILED,
    COND_RUNNING,
    COND_SUCCEEDED,
    PERMANENT_TRAINER_REASONS,
    REASON_BACKOFF_LIMIT,
    REASON_BELOW_MIN,
    REASON_COMPLETED,
    REASON_CREATE_FAILED,
    REASON_IMAGE_PULL,
    REASON_IN_PROGRESS,
    REASON_LAUNCHER_BACKOFF,
    REASON_STALLED,
    REASON_STARTING,
    REASON_TRAINING,
    Phase,
    TrainingRun,
)
from accordion_operator.config import Config
from accordion_operator.core.timefmt import from_rfc3339, to_rfc3339
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.kueue import LABEL_QUEUE
from accordion_operator.trainingrun.observe import (
    EXIT_REASONS,
    IMAGE_PULL_REASONS,
    Children,
    PodState,
)

#: (type, reason, message) of an Event on the run
Event = tuple[str, str, str]


# --- inputs and results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pods:
    """A run's child pods, by role and state."""

    all: tuple[PodState, ...]
    #: the worker pods, and a launcher that hosts worker 0: both hold a Horovod host
    workers: tuple[PodState, ...]
    launchers: tuple[PodState, ...]
    #: workers neither ended nor being deleted
    live: tuple[PodState, ...]
    ready: tuple[PodState, ...]
    #: the ssh Secret, ServiceAccount, Role and RoleBinding exist
    auth_ready: bool
    #: why the apiserver refused the last creation of a child ("" when it did not)
    create_error: str

    @classmethod
    def of(cls, children: Children) -> Pods:
        workers = tuple(
            p for p in children.pods if p.role == builders.ROLE_WORKER or p.hosts_worker
        )
        live = tuple(p for p in workers if p.live)
        return cls(
            all=tuple(children.pods),
            workers=workers,
            launchers=tuple(p for p in children.pods if p.role == builders.ROLE_LAUNCHER),
            live=live,
            ready=tuple(p for p in live if p.ready),
            auth_ready=children.auth_ready,
            create_error=children.create_error,
        )

    @property
    def launcher(self) -> PodState | None:
        return self.launchers[0] if self.launchers else None

    @property
    def plain(self) -> tuple[PodState, ...]:
        """The live worker pods that are no launcher: what scaling creates and removes."""
        return tuple(p for p in self.live if p.role == builders.ROLE_WORKER)


def hosts_worker(run: TrainingRun, cfg: Config) -> bool:
    """Whether a launcher created for `run` now hosts its worker 0 (Config.launcher_hosts_worker).
    Not for a run Kueue admits: its Workloads' pod sets are a launcher and the workers."""
    return cfg.launcher_hosts_worker and LABEL_QUEUE not in run.metadata.labels


@dataclass(frozen=True)
class Cond:
    """A condition a phase sets."""

    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Outcome:
    """The run finishes in this pass: Succeeded (`ok`) or Failed, for a reason."""

    ok: bool
    reason: str
    message: str

    @property
    def phase(self) -> Phase:
        return "Succeeded" if self.ok else "Failed"

    @property
    def conditions(self) -> tuple[Cond, Cond]:
        ok, reason, msg = self.ok, self.reason, self.message
        return (
            Cond(COND_SUCCEEDED, ok, reason if ok else REASON_IN_PROGRESS, msg if ok else ""),
            Cond(COND_FAILED, not ok, REASON_IN_PROGRESS if ok else reason, "" if ok else msg),
        )

    @property
    def event(self) -> Event:
        return ("Normal" if self.ok else "Warning", self.reason, self.message)


@dataclass(frozen=True)
class Changes:
    """Children to create and delete, and Events, that a phase asks for."""

    create: tuple[dict[str, Any], ...] = ()
    delete: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    #: the pods created need the ssh Secret/SA/Role/RoleBinding, which are not there yet
    ensure_auth: bool = False

    def __add__(self, other: Changes) -> Changes:
        return Changes(
            self.create + other.create,
            self.delete + other.delete,
            self.events + other.events,
            self.ensure_auth or other.ensure_auth,
        )


@dataclass(frozen=True)
class LauncherStep:
    """What the launcher's state asks for: the run's outcome, or a restart after a backoff."""

    outcome: Outcome | None = None
    changes: Changes = Changes()
    restarted: bool = False
    #: when the failed launcher ended (the backoff counts from there)
    failed_time: str | None = None
    #: Running=False while the launcher waits for its restart
    running: Cond | None = None
    requeue_after: float | None = None


@dataclass(frozen=True)
class BelowMin:
    """The below-minimum deadline: when it started, and the outcome once it passed."""

    since: str | None = None
    outcome: Outcome | None = None
    requeue_after: float | None = None


@dataclass(frozen=True)
class LeftWorld:
    """A Ready worker that left the Horovod world, to delete; or when to look again."""

    changes: Changes = Changes()
    requeue_after: float | None = None


@dataclass(frozen=True)
class Progress:
    """What the phases of an admitted run decided (nothing, for a run not admitted)."""

    changes: Changes = Changes()
    conditions: tuple[Cond, ...] = ()
    outcome: Outcome | None = None
    requeue_after: float | None = None
    #: the failed launcher is deleted for a restart
    restarted: bool = False
    #: when the failed launcher ended (the backoff counts from there)
    launcher_failed_time: str | None = None
    #: since when fewer than `min` workers are ready
    below_min_since: str | None = None
    #: the launcher is restarted because training made no progress
    stalled: bool = False


# --- the phases ----------------------------------------------------------------------------------


def running(run: TrainingRun, pods: Pods, workers: int, cfg: Config, now: float) -> Progress:
    """The phases of a run granted `workers`, in order: the launcher's lifecycle and the workers'
    failures (either may finish the run, which ends the phases here), then the children to
    create and delete, the below-minimum deadline and the Running condition."""
    step = launcher_lifecycle(run, pods.launcher, cfg, now)
    stall = stall_watch(run, pods.launcher, cfg, now) if step == LauncherStep() else None
    step = stall or step
    conds: tuple[Cond, ...] = () if step.running is None else (step.running,)
    outcome = step.outcome or worker_failure(pods.workers)
    if outcome is not None:
        return Progress(
            step.changes, conds, outcome, step.requeue_after, step.restarted, step.failed_time
        )
    # not while the launcher is being replaced: its world is going away
    left = left_world(run, pods, workers, cfg, now) if step.changes == Changes() else LeftWorld()
    changes = (
        step.changes
        + launcher_creation(run, pods, cfg)
        + worker_replacement(pods)
        + scaling(run, pods, workers, cfg)
        + left.changes
    )
    below = below_minimum(run, pods, now, step.requeue_after)
    if below.outcome is None and step.running is None:
        conds = (running_condition(pods, workers, run.spec.workers.min),)
    requeue = min(
        (r for r in (below.requeue_after, step.requeue_after, left.requeue_after) if r is not None),
        default=None,
    )
    return Progress(
        changes,
        conds,
        below.outcome,
        requeue,
        step.restarted,
        step.failed_time,
        below.since,
        stalled=stall is not None and stall.restarted,
    )


def stall_watch(
    run: TrainingRun, launcher: PodState | None, cfg: Config, now: float
) -> LauncherStep | None:
    """The progress watchdog of a running launcher: training that reported nothing for the
    deadline (since `training.updatedAt`, or since the run last turned Running, whichever is
    later) restarts the launcher from the last checkpoint once; a second stall fails the run
    (`Stalled`). A hung collective, a training process killed in a pod that stays Ready, or a
    launcher stuck in a loop would otherwise hold the GPUs for ever. None: nothing to do yet."""
    deadline = run.spec.progress_deadline_seconds
    limit = float(deadline) if deadline is not None else cfg.progress_deadline_seconds
    if limit <= 0 or launcher is None or launcher.phase != "Running" or launcher.deleting:
        return None
    st = run.status
    running = next((c for c in st.conditions if c.type == COND_RUNNING), None)
    if running is None or running.status != "True":
        return None  # still starting: the below-minimum deadline covers that
    stamps = (st.training.updated_at if st.training else None, running.last_transition_time)
    since = max((t for t in map(from_rfc3339, stamps) if t is not None), default=None)
    # Status is writable by the launcher: a time in the future counts as now, and without a
    # usable time (none, or garbage) the launcher pod's creation, which only the apiserver sets.
    if since is None:
        since = launcher.created if launcher.created is not None else now
    if since > now:
        since = now
    left = since + limit - now
    if left > 0:
        return LauncherStep(requeue_after=left)
    quiet = f"no training progress for {now - since:.0f} s (deadline {limit:.0f} s)"
    if (st.stall_restarts or 0) >= 1:
        return LauncherStep(Outcome(False, REASON_STALLED, f"{quiet}, again after a restart"))
    event = (
        "Warning",
        REASON_STALLED,
        f"{quiet}: restarting the launcher from the last checkpoint",
    )
    return LauncherStep(changes=Changes(delete=(launcher.name,), events=(event,)), restarted=True)


def launcher_lifecycle(
    run: TrainingRun, launcher: PodState | None, cfg: Config, now: float
) -> LauncherStep:
    """A launcher that exited 0 finishes the run; one that failed fails it for a permanent
    trainer error or past spec.backoffLimit, else it is restarted after an exponential backoff
    (the trainer resumes from the last checkpoint)."""
    if launcher is None:
        return LauncherStep()
    if launcher.phase == "Succeeded":
        return LauncherStep(Outcome(True, REASON_COMPLETED, "training finished; results written"))
    if launcher.phase != "Failed" or launcher.deleting:
        return LauncherStep()
    spec, restarts = run.spec, run.status.launcher_restarts or 0
    reason = EXIT_REASONS.get(launcher.exit_code or 1, "TrainingError")
    detail = launcher.message or f"launcher exited with code {launcher.exit_code}"
    cause = f"{reason}: {detail}"
    if reason in PERMANENT_TRAINER_REASONS:
        return LauncherStep(Outcome(False, reason, cause))
    if restarts >= spec.backoff_limit:
        return LauncherStep(
            Outcome(
                False,
                REASON_BACKOFF_LIMIT,
                f"launcher failed {restarts + 1} times (backoffLimit {spec.backoff_limit}); "
                f"last: {cause}",
            )
        )
    delay = min(cfg.launcher_backoff_seconds * 2**restarts, cfg.launcher_backoff_max_seconds)
    failed_at = launcher.finished_at or from_rfc3339(run.status.launcher_failed_time) or now
    wait = failed_at + delay - now
    backoff = Cond(
        COND_RUNNING,
        False,
        REASON_LAUNCHER_BACKOFF,
        f"launcher failed ({cause}); restart in {max(0.0, wait):.0f} s",
    )
    if wait > 0:
        return LauncherStep(failed_time=to_rfc3339(failed_at), running=backoff, requeue_after=wait)
    restart = (
        "Warning",
        "LauncherRestart",
        f"restart {restarts + 1}/{spec.backoff_limit} after {cause}; "
        "resuming from the last checkpoint",
    )
    return LauncherStep(
        changes=Changes(delete=(launcher.name,), events=(restart,)),
        restarted=True,
        failed_time=to_rfc3339(failed_at),
        running=backoff,
    )


def worker_failure(workers: Iterable[PodState]) -> Outcome | None:
    """A worker that failed its data stage-in or model load fails the run: replacing it would
    fail the same way (contract: such a worker exits with the code and is never Ready)."""
    for p in workers:
        reason = EXIT_REASONS.get(p.exit_code or 0)
        if reason is not None and reason in PERMANENT_TRAINER_REASONS and p.phase == "Failed":
            detail = p.message or f"exit code {p.exit_code}"
            return Outcome(False, reason, f"{reason}: worker {p.name}: {detail}")
    return None


def launcher_creation(run: TrainingRun, pods: Pods, cfg: Config) -> Changes:
    """The launcher, when there is none: at admission, or once a restarted one is gone."""
    if pods.launcher is not None:
        return Changes()
    pod = builders.build_launcher_pod(run, cfg, hosts_worker(run, cfg))
    return Changes(create=(pod,), ensure_auth=not pods.auth_ready)


def worker_replacement(pods: Pods) -> Changes:
    """Workers that ended are deleted; scaling then creates their replacements. A launcher that
    hosts worker 0 is not among them: its end is the launcher's lifecycle."""
    ended = [
        p for p in pods.workers if p.role == builders.ROLE_WORKER and p.terminal and not p.deleting
    ]
    return Changes(
        delete=tuple(p.name for p in ended),
        events=tuple(
            (
                "Warning",
                "WorkerReplaced",
                f"worker {p.name} ended ({p.phase}, exit {p.exit_code}): replacing it",
            )
            for p in ended
        ),
    )


def left_world(run: TrainingRun, pods: Pods, desired: int, cfg: Config, now: float) -> LeftWorld:
    """A Ready worker whose training process left the Horovod world is deleted
    (`WorkerLeftWorld`); `scaling` then creates its replacement, a new pod with a new IP (the
    host Horovod dropped is an address), which Horovod admits at its next reset. Horovod drops
    the host of a training process that died (killed, OOM-killed, crashed) for good and trains
    on without it, while the pod stays Ready and holds its GPUs. The trainer reports its world
    (`training.worldPods`, confirmed at `worldTime`: Horovod admits a discovered host at the
    next commit); a Ready worker missing from it that was Ready more than
    ACCORDION_WORLD_GRACE_SECONDS before `worldTime` was not admitted. Only for a Running run
    with a running launcher, and only on a report taken after this launcher was created (a
    restarted launcher's predecessor's report describes another world).

    status.training is written by the run's own launcher, which runs user code, so a forged
    report can make the operator delete only this run's own workers, and at most one per grace
    period: nothing is deleted while a worker of the run is being created, replaced or removed,
    or was created within the grace period (the replacement of the last one included); these
    are facts of the pods, which only the apiserver sets. A `worldTime` in the future counts as
    now."""
    grace = cfg.world_grace_seconds
    training, launcher = run.status.training, pods.launcher
    if grace <= 0 or training is None or not training.world_pods or launcher is None:
        return LeftWorld()
    if run.status.phase != "Running" or launcher.phase != "Running" or launcher.deleting:
        return LeftWorld()
    running = next((c for c in run.status.conditions if c.type == COND_RUNNING), None)
    seen = from_rfc3339(training.world_time)
    if running is None or running.status != "True" or seen is None or launcher.created is None:
        return LeftWorld()
    seen = min(seen, now)
    if seen <= launcher.created:
        return LeftWorld()
    world = set(training.world_pods)
    if launcher.max_workers is not None and len(world) >= launcher.max_workers:
        # horovodrun admits no more than its --max-np: a worker beyond it (spec.workers.max
        # raised after the launcher started) waits outside the world, which is no failure
        return LeftWorld()
    gone = sorted(
        (
            p
            for p in pods.ready
            if p.role == builders.ROLE_WORKER
            and p.name not in world
            and p.ready_since is not None
            and seen - p.ready_since > grace
        ),
        key=lambda p: p.name,
    )
    if not gone or not len(pods.workers) == len(pods.live) == desired:
        return LeftWorld()  # workers are being created, replaced or removed: wait for them
    newest = max((p.created for p in pods.workers if p.created is not None), default=None)
    if newest is not None and now - newest < grace:
        return LeftWorld(requeue_after=newest + grace - now)
    victim = gone[0]
    event = (
        "Warning",
        "WorkerLeftWorld",
        f"worker {victim.name} is Ready but not in the Horovod world of {len(world)} pods its "
        f"trainer confirmed at {training.world_time} (its training process ended): replacing it",
    )
    return LeftWorld(Changes(delete=(victim.name,), events=(event,)))


def scaling(run: TrainingRun, pods: Pods, desired: int, cfg: Config) -> Changes:
    """Live workers to the grant: the surplus deleted, the missing created at free indices. A
    launcher that hosts worker 0 (or will: one being restarted) holds one of the grant and
    index 0, and is never removed: the others are scaled around it."""
    launcher = pods.launcher
    hosted = launcher.hosts_worker if launcher is not None else hosts_worker(run, cfg)
    live, want = pods.plain, desired - 1 if hosted else desired
    if len(live) > want:
        rank0 = run.status.training.rank0_pod if run.status.training else None
        victims = _pick_victims(live, len(live) - want, rank0)
        return Changes(delete=tuple(p.name for p in victims))
    if len(live) < want:
        taken = {p.index for p in pods.workers if p.index is not None} | ({0} if hosted else set())
        return Changes(
            create=tuple(
                builders.build_worker_pod(run, i, cfg)
                for i in _free_indices(taken, want - len(live))
            ),
            ensure_auth=not pods.auth_ready,
        )
    return Changes()


def _pick_victims(live: Sequence[PodState], count: int, rank0: str | None) -> list[PodState]:
    """Workers to remove when scaling down: never-scheduled first, then not ready, then the
    highest index, so the workers that are training keep training; rank 0's pod (it writes the
    checkpoints and the final model) last of all."""
    order = sorted(
        live, key=lambda p: (p.name == rank0, p.node is not None, p.ready, -(p.index or 0))
    )
    return order[:count]


def _free_indices(taken: set[int], count: int) -> list[int]:
    out: list[int] = []
    i = 0
    while len(out) < count:
        if i not in taken:
            out.append(i)
        i += 1
    return out


def below_minimum(
    run: TrainingRun, pods: Pods, now: float, requeue_after: float | None
) -> BelowMin:
    """Fewer than `min` workers ready for longer than minAvailableTimeoutSeconds fails the run
    with a clear reason; until then the run is checked again at the deadline (or sooner, when
    `requeue_after`, what the run already asked for, is sooner)."""
    workers = run.spec.workers
    if len(pods.ready) >= workers.min:
        return BelowMin(requeue_after=requeue_after)
    since = from_rfc3339(run.status.below_min_since)
    since = since if since is not None else now
    timeout = workers.min_available_timeout_seconds
    if now - since >= timeout:
        failed = Outcome(
            False,
            REASON_BELOW_MIN,
            f"only {len(pods.ready)} of the minimum {workers.min} workers were ready "
            f"for {timeout} s; check pod events (image pull, scheduling, stage-in)",
        )
        return BelowMin(to_rfc3339(since), failed, requeue_after)
    return BelowMin(to_rfc3339(since), None, min(requeue_after or timeout, since + timeout - now))


def running_condition(pods: Pods, desired: int, minimum: int) -> Cond:
    """Running=True once the launcher runs with at least `min` workers ready; until then why not
    (a pod the apiserver refuses to create first, then one that cannot pull its image)."""
    missing = pods.launcher is None or len(pods.live) < desired
    if pods.create_error and missing:
        return Cond(COND_RUNNING, False, REASON_CREATE_FAILED, pods.create_error)
    pulling = next(
        (p for p in (*pods.live, *pods.launchers) if p.waiting_reason in IMAGE_PULL_REASONS), None
    )
    if pulling is not None:
        return Cond(
            COND_RUNNING,
            False,
            REASON_IMAGE_PULL,
            f"pod {pulling.name}: {pulling.waiting_reason}: {pulling.waiting_message}",
        )
    launcher, ready = pods.launcher, len(pods.ready)
    if launcher is not None and launcher.phase == "Running" and ready >= minimum:
        return Cond(COND_RUNNING, True, REASON_TRAINING, f"{ready} workers ready")
    return Cond(
        COND_RUNNING,
        False,
        REASON_STARTING,
        f"{ready} of {desired} workers ready; launcher "
        f"{launcher.phase if launcher else 'being created'}",
    )
