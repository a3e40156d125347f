"""Reconcile an Experiment: observed experiment + its trials -> a plan (pure functions).

`decide_experiment` re-derives everything from its observations (level-based): which trials to
create, which running trials to stop (pruned by the early-stopping rule, or stopped because the
search ended), and the status. Calling it again after a crash with the same observations gives
the same plan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    Experiment,
)
from accordion_operator.core.conditions import Conditions
from accordion_operator.core.status import merge_patch
from accordion_operator.core.timefmt import to_rfc3339
from accordion_operator.experiment import search
from accordion_operator.experiment.observe import ChildRun
from accordion_operator.experiment.trials import STOP_ENDED, STOP_PRUNED, build_trial_run


@dataclass
class ExperimentPlan:
    #: child TrainingRuns to create (AlreadyExists is success: names are deterministic)
    create: list[dict[str, Any]] = field(default_factory=list)
    #: (child name, STOP_PRUNED | STOP_ENDED): runs to stop with `stop_patch`
    stop: list[tuple[str, str]] = field(default_factory=list)
    #: merge patch for the status subresource (None: unchanged)
    status_patch: dict[str, Any] | None = None
    #: (type, reason, message) Events on the experiment
    events: list[tuple[str, str, str]] = field(default_factory=list)


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


def _goal_met(value: float, goal: float, maximize: bool) -> bool:
    return value >= goal if maximize else value <= goal


def decide_experiment(
    exp: Experiment,
    children: Sequence[ChildRun],
    now: float,
    memo: search.RungMemo | None = None,
) -> ExperimentPlan:
    """Observed experiment + its child runs -> what to create, what to stop, the status.

    `memo` only saves work between calls (see `search.build_study`); it never changes a plan."""
    plan = ExperimentPlan()
    if exp.metadata.deletion_timestamp:
        return plan  # the garbage collector deletes the children
    spec, st = exp.spec, exp.status
    maximize = spec.objective.direction == "maximize"
    conds = Conditions(exp.status.conditions, exp.metadata.generation, now, CONDITION_TYPES)
    by_trial = {c.trial: c for c in children}
    kids = sorted(by_trial.values(), key=lambda c: c.trial)
    active = [c for c in kids if c.active and not c.stop_requested]
    created = (kids[-1].trial + 1) if kids else 0
    limit = search.max_trials(spec)
    failed = sum(1 for c in kids if c.outcome == "Failed")
    best = best_child(kids, maximize)
    goal = spec.objective.goal
    phase = st.phase or "Running"
    message = st.message or ""
    finished = phase in FINISHED_PHASES
    new: dict[str, Any] = {"startTime": st.start_time or to_rfc3339(now)}
    if st.completion_time:
        new["completionTime"] = st.completion_time

    def end(ok: bool, reason: str, msg: str) -> None:
        nonlocal phase, message, finished
        phase, message, finished = ("Succeeded" if ok else "Failed"), msg, True
        new["completionTime"] = to_rfc3339(now)
        conds.set(COND_RUNNING, False, REASON_SEARCH_ENDED, msg)
        conds.set(COND_SUCCEEDED, ok, reason if ok else REASON_IN_PROGRESS, msg if ok else "")
        conds.set(COND_FAILED, not ok, reason if not ok else REASON_IN_PROGRESS, "" if ok else msg)
        plan.events.append(("Normal" if ok else "Warning", reason, msg))

    goal_reached = (
        goal is not None
        and best is not None
        and best.value is not None
        and _goal_met(best.value, goal, maximize)
    )
    if finished:
        for cond in st.conditions:
            conds.new[cond.type] = cond
    elif spec.algorithm == "grid" and search.grid_size(spec) > MAX_GRID_POINTS:
        end(
            False,
            REASON_INVALID_SPEC,
            f"the grid has more than {MAX_GRID_POINTS} points; use fewer values or larger steps, "
            "or algorithm random/tpe",
        )
    elif goal_reached:
        assert best is not None
        assert goal is not None
        conds.set(
            COND_GOAL_REACHED,
            True,
            REASON_GOAL_REACHED,
            f"{best.name}: {spec.objective.metric}={best.value:.6g} reached the goal {goal:g}",
        )
        end(
            True,
            REASON_GOAL_REACHED,
            f"{best.name} reached the goal {spec.objective.metric}={goal:g}; other runs stopped",
        )
    elif failed > spec.max_failed_runs:
        end(
            False,
            REASON_TOO_MANY_FAILURES,
            f"{failed} runs failed (maxFailedRuns {spec.max_failed_runs}); see the Failed "
            "condition of the runs in status.runs",
        )
    else:
        needs_pruning = spec.early_stopping.algorithm != "none" and any(
            c.intermediate for c in active
        )
        slots = min(spec.parallelism - len(active), limit - created)
        if needs_pruning or slots > 0:
            built = search.build_study(spec, [c.record() for c in kids], exp.key, memo)
            pruned = set(built.prune)
            for c in active:
                if c.trial in pruned:
                    last = f"{c.intermediate[-1][1]:.6g} at epoch {c.intermediate[-1][0]}"
                    plan.stop.append((c.name, STOP_PRUNED))
                    plan.events.append(
                        (
                            "Normal",
                            "RunPruned",
                            f"{c.name}: "
                            f"{spec.objective.metric}={last} ({spec.early_stopping.algorithm})",
                        )
                    )
            # Create only once the pruned runs read as pruned: the next suggestion then sees the
            # same study it will see after a restart (determinism per trial number).
            if not pruned and slots > 0:
                for s in search.suggest(built, slots):
                    plan.create.append(build_trial_run(exp, s))
                    plan.events.append(
                        (
                            "Normal",
                            "RunCreated",
                            f"trial {s.number} ({s.sampler}): "
                            f"{json.dumps(s.params, sort_keys=True)}",
                        )
                    )
        if created >= limit and not active:
            if best is not None:
                reason = (
                    REASON_GRID_EXHAUSTED
                    if spec.algorithm == "grid" and limit < spec.max_runs
                    else REASON_MAX_RUNS
                )
                end(
                    True,
                    reason,
                    f"{created} runs finished; best {best.name} "
                    f"{spec.objective.metric}={best.value:.6g}",
                )
            else:
                end(
                    False,
                    REASON_NO_SUCCESSFUL_RUNS,
                    f"none of the {created} runs finished with metric {spec.objective.metric!r}; "
                    "check that the training code reports it",
                )
        else:
            n_active = len(active) - len(plan.stop) + len(plan.create)
            message = f"{n_active} runs active, {created + len(plan.create)}/{limit} created"
            conds.set(COND_RUNNING, True, REASON_SEARCHING, message)
            conds.set(COND_SUCCEEDED, False, REASON_IN_PROGRESS)
            conds.set(COND_FAILED, False, REASON_IN_PROGRESS)
    if finished:
        # Level-based: a run still active after the end (e.g. the operator died between the
        # status write and the stops) is stopped on any later pass.
        for c in active:
            if (c.name, STOP_PRUNED) not in plan.stop:
                plan.stop.append((c.name, STOP_ENDED))
    if COND_GOAL_REACHED not in conds.new:
        if goal is None:
            conds.set(COND_GOAL_REACHED, False, REASON_NO_GOAL)
        else:
            conds.set(
                COND_GOAL_REACHED,
                False,
                REASON_GOAL_NOT_REACHED,
                f"best {best.value:.6g}" if best and best.value is not None else "",
            )

    counts = {
        o: sum(1 for c in kids if c.outcome == o)
        for o in ("Running", "Succeeded", "Failed", "Pruned", "Stopped")
    }
    done = len(kids) - counts["Running"]
    rows = [
        {
            "name": c.name,
            "trial": c.trial,
            "parameters": dict(c.params),
            "outcome": c.outcome,
            **({"metric": c.value} if c.value is not None else {}),
        }
        for c in kids[-MAX_STATUS_RUNS:]
    ]
    new.update(
        {
            "phase": phase,
            "conditions": conds.dump(),
            "observedGeneration": exp.metadata.generation,
            "runsCreated": len(kids),
            "runsActive": counts["Running"],
            "runsSucceeded": counts["Succeeded"],
            "runsFailed": counts["Failed"],
            "runsPruned": counts["Pruned"],
            "runsStopped": counts["Stopped"],
            "runsSummary": f"{done}/{limit}",
            "runs": rows,
        }
    )
    if best is not None and best.value is not None:
        new["bestRun"] = {
            "name": best.name,
            "trial": best.trial,
            "parameters": dict(best.params),
            "metric": best.value,
            **({"resultsURI": best.results_uri} if best.results_uri else {}),
        }
    if message:
        new["message"] = message[:256]
    old = exp.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    plan.status_patch = merge_patch(old, new)
    return plan
