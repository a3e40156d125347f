"""Reconcile an Experiment: observed experiment + its trials -> a plan (pure functions).

`decide_experiment` re-derives everything from its observations (level-based): which trials to
create, which running trials to stop (pruned by the early-stopping rule, or stopped because the
search ended), and the status. Calling it again after a crash with the same observations gives
the same plan. It goes through named phases, each from typed inputs to a typed result:

1. `read_trials`: the children -> `Trials` (one per trial number, the active ones, the best);
2. a finished experiment is `kept` as it is (its leftover active runs are stopped);
3. `early_end`: an invalid grid, the goal reached or too many failures end the search at once;
4. `advance`: otherwise running trials are pruned and new ones suggested (`Steps`);
5. `search_end`: every trial created and none active ends the search;
6. the `Verdict` (phase, message, conditions, the ending's Event): `ended` or `searching`;
7. `build_status`: the `ExperimentStatus`, and `status_patch` the one write it needs.

`decide` is the controller's entry: an experiment's body (which the models may reject:
`invalid_plan`) and its trial runs as the cache holds them -> a `Decision`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.common import Condition
from accordion_operator.api.experiment import (
    COND_FAILED,
    COND_GOAL_REACHED,
    COND_RUNNING,
    COND_SUCCEEDED,
    CONDITION_TYPES,
    FINISHED_PHASES,
    MAX_GRID_POINTS,
    MAX_STATUS_RUNS,
    REASON_GOAL_NOT_REACHED,
    REASON_GOAL_REACHED,
    REASON_GRID_EXHAUSTED,
    REASON_IN_PROGRESS,
    REASON_INVALID_SPEC,
    REASON_MAX_RUNS,
    REASON_NO_GOAL,
    REASON_NO_SUCCESSFUL_RUNS,
    REASON_SEARCH_ENDED,
    REASON_SEARCHING,
    REASON_TOO_MANY_FAILURES,
    BestRun,
    Experiment,
    ExperimentStatus,
    Phase,
    RunRecord,
)
from accordion_operator.core.conditions import Conditions
from accordion_operator.core.status import merge_patch
from accordion_operator.core.timefmt import to_rfc3339
from accordion_operator.experiment import search
from accordion_operator.experiment.observe import ChildRun, owned_children
from accordion_operator.experiment.trials import STOP_ENDED, STOP_PRUNED, build_trial_run

#: (type, reason, message) of an Event on the experiment
Event = tuple[str, str, str]
#: (child name, STOP_PRUNED | STOP_ENDED): a run to stop with `trials.stop_patch`
Stop = tuple[str, str]


@dataclass
class ExperimentPlan:
    #: child TrainingRuns to create (AlreadyExists is success: names are deterministic)
    create: list[dict[str, Any]] = field(default_factory=list)
    #: runs to stop
    stop: list[Stop] = field(default_factory=list)
    #: merge patch for the status subresource (None: unchanged)
    status_patch: dict[str, Any] | None = None
    #: Events on the experiment
    events: list[Event] = field(default_factory=list)
    #: not an action: the rung values the study's rebuild replayed (`search.Study.rungs`), for
    #: the caller to merge into the memo it passes next time
    rungs: search.RungMemo = field(default_factory=dict)


@dataclass(frozen=True)
class Trials:
    """What a decision reads of the experiment's children, derived once."""

    #: one child per trial number, in trial order
    kids: tuple[ChildRun, ...]
    #: running and not yet asked to stop
    active: tuple[ChildRun, ...]
    #: trial numbers taken: the next trial is number `created`
    created: int
    #: how many trials the search may create (`search.max_trials`)
    limit: int
    failed: int
    best: ChildRun | None


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def best_child(children: Sequence[ChildRun], maximize: bool) -> ChildRun | None:
    """The succeeded run with the best objective; the lower trial wins a tie."""
    best: ChildRun | None = None
    for c in sorted(children, key=lambda c: c.trial):
        if c.outcome != "Succeeded" or c.value is None:
            continue
        if best is None or best.value is None or _better(c.value, best.value, maximize):
            best = c
    return best


def _maximize(exp: Experiment) -> bool:
    return exp.spec.objective.direction == "maximize"


def read_trials(exp: Experiment, children: Sequence[ChildRun]) -> Trials:
    kids = tuple(sorted({c.trial: c for c in children}.values(), key=lambda c: c.trial))
    return Trials(
        kids=kids,
        active=tuple(c for c in kids if c.active and not c.stop_requested),
        created=(kids[-1].trial + 1) if kids else 0,
        limit=search.max_trials(exp.spec),
        failed=sum(1 for c in kids if c.outcome == "Failed"),
        best=best_child(kids, _maximize(exp)),
    )


@dataclass(frozen=True)
class Ending:
    """Why the search ends on this pass: Succeeded (`ok`) or Failed, with the reason and message
    of that condition and of its Event."""

    ok: bool
    reason: str
    message: str
    #: GoalReached=True's message, when a run met the goal
    goal_message: str | None = None


_GRID_TOO_LARGE = (
    f"the grid has more than {MAX_GRID_POINTS} points; use fewer values or larger steps, "
    "or algorithm random/tpe"
)


def invalid_grid(exp: Experiment, trials: Trials) -> Ending | None:
    """A grid too large to enumerate (the schema's CEL cannot multiply over the parameters)."""
    spec = exp.spec
    if spec.algorithm == "grid" and search.grid_size(spec) > MAX_GRID_POINTS:
        return Ending(False, REASON_INVALID_SPEC, _GRID_TOO_LARGE)
    return None


def goal_reached(exp: Experiment, trials: Trials) -> Ending | None:
    best, goal, metric = trials.best, exp.spec.objective.goal, exp.spec.objective.metric
    if goal is None or best is None or best.value is None:
        return None
    if not (best.value >= goal if _maximize(exp) else best.value <= goal):
        return None
    return Ending(
        True,
        REASON_GOAL_REACHED,
        f"{best.name} reached the goal {metric}={goal:g}; other runs stopped",
        goal_message=f"{best.name}: {metric}={best.value:.6g} reached the goal {goal:g}",
    )


def too_many_failures(exp: Experiment, trials: Trials) -> Ending | None:
    allowed = exp.spec.max_failed_runs
    if trials.failed <= allowed:
        return None
    return Ending(
        False,
        REASON_TOO_MANY_FAILURES,
        f"{trials.failed} runs failed (maxFailedRuns {allowed}); see the Failed "
        "condition of the runs in status.runs",
    )


def early_end(exp: Experiment, trials: Trials) -> Ending | None:
    """The search ends before its budget is spent; the first of these that holds says why."""
    for check in (invalid_grid, goal_reached, too_many_failures):
        if (ending := check(exp, trials)) is not None:
            return ending
    return None


def search_end(exp: Experiment, trials: Trials) -> Ending | None:
    """Every trial created and none active: the search is over."""
    if trials.created < trials.limit or trials.active:
        return None
    spec, best = exp.spec, trials.best
    if best is None:
        return Ending(
            False,
            REASON_NO_SUCCESSFUL_RUNS,
            f"none of the {trials.created} runs finished with metric {spec.objective.metric!r}; "
            "check that the training code reports it",
        )
    exhausted = spec.algorithm == "grid" and trials.limit < spec.max_runs
    return Ending(
        True,
        REASON_GRID_EXHAUSTED if exhausted else REASON_MAX_RUNS,
        f"{trials.created} runs finished; best {best.name} "
        f"{spec.objective.metric}={best.value:.6g}",
    )


@dataclass(frozen=True)
class Steps:
    """What a search that goes on does this pass: running trials to stop (pruned) or trials to
    create, their Events, and the rung values the study's rebuild replayed."""

    stop: tuple[Stop, ...] = ()
    create: tuple[dict[str, Any], ...] = ()
    events: tuple[Event, ...] = ()
    rungs: search.RungMemo = field(default_factory=dict)


def advance(exp: Experiment, trials: Trials, memo: Mapping[int, search.RungEntry] | None) -> Steps:
    """Prune running trials by the early-stopping rule, or fill the free slots (parallelism,
    within the trial budget) with suggested trials."""
    spec = exp.spec
    needs_pruning = spec.early_stopping.algorithm != "none" and any(
        c.intermediate for c in trials.active
    )
    slots = min(spec.parallelism - len(trials.active), trials.limit - trials.created)
    if not needs_pruning and slots <= 0:
        return Steps()  # no study to rebuild
    built = search.build_study(spec, [c.record() for c in trials.kids], exp.key, memo)
    if built.prune:
        pruned = [c for c in trials.active if c.trial in built.prune]
        # Create only once the pruned runs read as pruned: the next suggestion then sees the
        # same study it will see after a restart (determinism per trial number).
        return Steps(
            stop=tuple((c.name, STOP_PRUNED) for c in pruned),
            events=tuple(_pruned_event(exp, c) for c in pruned),
            rungs=built.rungs,
        )
    suggestions = search.suggest(built, max(slots, 0))
    return Steps(
        create=tuple(build_trial_run(exp, s) for s in suggestions),
        events=tuple(
            (
                "Normal",
                "RunCreated",
                f"trial {s.number} ({s.sampler}): {json.dumps(s.params, sort_keys=True)}",
            )
            for s in suggestions
        ),
        rungs=built.rungs,
    )


def _pruned_event(exp: Experiment, c: ChildRun) -> Event:
    epoch, value = c.intermediate[-1]
    es = exp.spec.early_stopping.algorithm
    return (
        "Normal",
        "RunPruned",
        f"{c.name}: {exp.spec.objective.metric}={value:.6g} at epoch {epoch} ({es})",
    )


@dataclass(frozen=True)
class Verdict:
    """Where the search stands after this pass."""

    phase: Phase
    message: str
    completion_time: str | None
    #: in CONDITION_TYPES order, as the status holds them
    conditions: list[Condition]
    #: the ending's Event, on the pass that ends the search
    events: tuple[Event, ...] = ()


def _conditions(exp: Experiment, now: float) -> Conditions:
    return Conditions(exp.status.conditions, exp.metadata.generation, now, CONDITION_TYPES)


def _with_goal(exp: Experiment, trials: Trials, conds: Conditions) -> list[Condition]:
    """The conditions, GoalReached=False unless a run met the goal: no goal, or the best yet."""
    best = trials.best
    if COND_GOAL_REACHED not in conds.new:
        if exp.spec.objective.goal is None:
            conds.set(COND_GOAL_REACHED, False, REASON_NO_GOAL)
        else:
            conds.set(
                COND_GOAL_REACHED,
                False,
                REASON_GOAL_NOT_REACHED,
                f"best {best.value:.6g}" if best and best.value is not None else "",
            )
    return conds.ordered()


def kept(exp: Experiment, trials: Trials, now: float) -> Verdict:
    """A finished experiment stays as it ended."""
    st = exp.status
    assert st.phase is not None  # kept only once finished
    conds = _conditions(exp, now)
    for cond in st.conditions:
        conds.new[cond.type] = cond
    return Verdict(st.phase, st.message or "", st.completion_time, _with_goal(exp, trials, conds))


def ended(exp: Experiment, trials: Trials, ending: Ending, now: float) -> Verdict:
    ok, reason, msg = ending.ok, ending.reason, ending.message
    conds = _conditions(exp, now)
    if ending.goal_message is not None:
        conds.set(COND_GOAL_REACHED, True, REASON_GOAL_REACHED, ending.goal_message)
    conds.set(COND_RUNNING, False, REASON_SEARCH_ENDED, msg)
    conds.set(COND_SUCCEEDED, ok, reason if ok else REASON_IN_PROGRESS, msg if ok else "")
    conds.set(COND_FAILED, not ok, reason if not ok else REASON_IN_PROGRESS, "" if ok else msg)
    return Verdict(
        "Succeeded" if ok else "Failed",
        msg,
        to_rfc3339(now),
        _with_goal(exp, trials, conds),
        events=(("Normal" if ok else "Warning", reason, msg),),
    )


def searching(exp: Experiment, trials: Trials, steps: Steps, now: float) -> Verdict:
    active = len(trials.active) - len(steps.stop) + len(steps.create)
    message = f"{active} runs active, {trials.created + len(steps.create)}/{trials.limit} created"
    conds = _conditions(exp, now)
    conds.set(COND_RUNNING, True, REASON_SEARCHING, message)
    conds.set(COND_SUCCEEDED, False, REASON_IN_PROGRESS)
    conds.set(COND_FAILED, False, REASON_IN_PROGRESS)
    return Verdict("Running", message, exp.status.completion_time, _with_goal(exp, trials, conds))


def search_pass(
    exp: Experiment, trials: Trials, memo: Mapping[int, search.RungEntry] | None, now: float
) -> tuple[Steps, Verdict]:
    """A search not yet finished: it ends early, or goes on and may end on its budget."""
    ending = early_end(exp, trials)
    if ending is not None:
        return Steps(), ended(exp, trials, ending, now)
    steps = advance(exp, trials, memo)
    ending = search_end(exp, trials)
    if ending is not None:
        return steps, ended(exp, trials, ending, now)
    return steps, searching(exp, trials, steps, now)


def _run_record(c: ChildRun) -> RunRecord:
    # Not validated: a row echoes the child's annotations, which a hand edit can make invalid;
    # the apiserver's schema judges the status write, and one odd child must not fail the pass.
    return RunRecord.model_construct(
        name=c.name, trial=c.trial, parameters=dict(c.params), metric=c.value, outcome=c.outcome
    )


def _best_run(c: ChildRun | None) -> BestRun | None:
    if c is None or c.value is None:
        return None
    return BestRun.model_construct(  # not validated: as `_run_record`
        name=c.name,
        trial=c.trial,
        parameters=dict(c.params),
        metric=c.value,
        results_uri=c.results_uri,
    )


def build_status(exp: Experiment, trials: Trials, verdict: Verdict, now: float) -> ExperimentStatus:
    counts = Counter(c.outcome for c in trials.kids)
    return ExperimentStatus(
        phase=verdict.phase,
        conditions=verdict.conditions,
        observed_generation=exp.metadata.generation,
        runs_created=len(trials.kids),
        runs_active=counts["Running"],
        runs_succeeded=counts["Succeeded"],
        runs_failed=counts["Failed"],
        runs_pruned=counts["Pruned"],
        runs_stopped=counts["Stopped"],
        runs_summary=f"{len(trials.kids) - counts['Running']}/{trials.limit}",
        best_run=_best_run(trials.best),
        runs=[_run_record(c) for c in trials.kids[-MAX_STATUS_RUNS:]],
        start_time=exp.status.start_time or to_rfc3339(now),
        completion_time=verdict.completion_time,
        message=verdict.message[:256] or None,
    )


def status_patch(old: ExperimentStatus, new: ExperimentStatus) -> dict[str, Any] | None:
    """The one write a status needs: the merge patch from what the experiment shows to `new`."""

    def wire(status: ExperimentStatus) -> dict[str, Any]:
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")

    return merge_patch(wire(old), wire(new))


def decide_experiment(
    exp: Experiment,
    children: Sequence[ChildRun],
    now: float,
    memo: Mapping[int, search.RungEntry] | None = None,
) -> ExperimentPlan:
    """Observed experiment + its child runs -> what to create, what to stop, the status.

    `memo` (see `search.build_study`) only saves work; it never changes a plan. It is only read:
    what this decision replayed comes back in `ExperimentPlan.rungs`."""
    if exp.metadata.deletion_timestamp:
        return ExperimentPlan()  # the garbage collector deletes the children
    trials = read_trials(exp, children)
    if exp.status.phase in FINISHED_PHASES:
        steps, verdict = Steps(), kept(exp, trials, now)
    else:
        steps, verdict = search_pass(exp, trials, memo, now)
    # Level-based: a run still active after the end (e.g. the operator died between the status
    # write and the stops) is stopped on any later pass. (A pass that prunes never ends the
    # search: the pruned runs were active.)
    leftovers = (
        [(c.name, STOP_ENDED) for c in trials.active] if verdict.phase in FINISHED_PHASES else []
    )
    return ExperimentPlan(
        create=list(steps.create),
        stop=[*steps.stop, *leftovers],
        status_patch=status_patch(exp.status, build_status(exp, trials, verdict, now)),
        events=[*steps.events, *verdict.events],
        rungs=steps.rungs,
    )


def invalid_plan(body: Mapping[str, Any], errors: Sequence[str], now: float) -> ExperimentPlan:
    """An Experiment the models reject (something the schema let through): Failed, once. With
    no model to read its status from, the patch sets only the phase, Failed and the message."""
    if (body.get("status") or {}).get("phase") == "Failed":
        return ExperimentPlan()
    message = "invalid spec: " + "; ".join(errors)
    gen = (body.get("metadata") or {}).get("generation", 0)
    conds = Conditions((), gen, now, CONDITION_TYPES)
    conds.set(COND_FAILED, True, REASON_INVALID_SPEC, message)
    return ExperimentPlan(
        status_patch={
            "phase": "Failed",
            "conditions": conds.dump(),
            "message": message[:256],
            "observedGeneration": gen,
        },
        events=[("Warning", REASON_INVALID_SPEC, message)],
    )


@dataclass(frozen=True)
class Observed:
    """One experiment as a pass reads it from the cache: its body (not yet validated), the runs
    labelled as its trials, and the rung memo of its earlier rebuilds (only read)."""

    body: Mapping[str, Any]
    trials: tuple[Mapping[str, Any], ...]
    memo: Mapping[int, search.RungEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """One experiment decided: its plan, and what the controller's bookkeeping needs."""

    #: the experiment, or the body the models rejected (`invalid_plan`)
    target: Experiment | Mapping[str, Any]
    plan: ExperimentPlan
    #: the experiment's own children the decision read (none for a rejected body)
    children: tuple[ChildRun, ...] = ()


def decide(observed: Observed, now: float) -> Decision:
    try:
        exp = Experiment.model_validate(observed.body)
    except ValueError as exc:
        errors = str(exc).splitlines()[:3]
        return Decision(observed.body, invalid_plan(observed.body, errors, now))
    children = owned_children(exp, observed.trials)
    return Decision(exp, decide_experiment(exp, children, now, observed.memo), tuple(children))


def decide_all(observed: Sequence[Observed], now: float) -> list[Decision]:
    """Decide experiments (pure: the controller runs it off the event loop)."""
    return [decide(o, now) for o in observed]
