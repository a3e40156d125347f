"""Reconcile an Experiment: observed experiment + child runs -> a plan (pure functions).

`observe_child` reads one child TrainingRun (a dict as the apiserver returns it) into what the
search needs; `decide_experiment` re-derives everything from those observations (level-based):
which trials to create (`build_trial_run`), which running trials to stop (pruned by the early
stopping rule, or stopped because the search ended), and the status. Calling it again after a
crash with the same observations gives the same plan.

How a child is stopped: the plan sets the child's `spec.suspend` (the TrainingRun controller then
releases its pods and GPUs and keeps its checkpoints and reported metrics) and the annotation
`accordion.dev/stopped: Pruned|Stopped`, which marks the trial's outcome for good.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_operator import builders, search
from accordion_operator.api.common import API_VERSION
from accordion_operator.api.experiment import (
    COND_FAILED,
    COND_GOAL_REACHED,
    COND_RUNNING,
    COND_SUCCEEDED,
    CONDITION_TYPES,
    FINISHED_PHASES,
    KIND,
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
    Outcome,
)
from accordion_operator.api.trainingrun import KIND as RUN_KIND
from accordion_operator.reconcile import Conditions, to_rfc3339

LABEL_EXPERIMENT = builders.LABEL_EXPERIMENT
LABEL_TRIAL = "accordion.dev/trial"
#: JSON object of the trial's parameters: the search is rebuilt from it after a restart.
ANNOTATION_PARAMETERS = "accordion.dev/parameters"
ANNOTATION_TRIAL = "accordion.dev/trial"
ANNOTATION_GRID_ID = "accordion.dev/grid-id"
#: Which sampler suggested the trial (`search.SamplerName`): informational, never read back.
ANNOTATION_SAMPLER = "accordion.dev/sampler"
#: Set (with spec.suspend) when the experiment stops a run: `Pruned` or `Stopped`.
ANNOTATION_STOPPED = "accordion.dev/stopped"
STOP_PRUNED = "Pruned"
STOP_ENDED = "Stopped"


def run_name(experiment: str, trial: int) -> str:
    return f"{experiment}-{trial:03d}"


# --- observed state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    """What the experiment needs to know of one child TrainingRun."""

    name: str
    trial: int
    params: Mapping[str, search.ParamValue]
    outcome: Outcome
    #: objective: final value (Succeeded) or the last reported one (Pruned/Stopped/Running)
    value: float | None = None
    intermediate: tuple[tuple[int, float], ...] = ()
    results_uri: str | None = None
    grid_id: int | None = None
    #: the experiment already asked this run to stop (annotation set)
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.outcome == "Running"

    def record(self) -> search.TrialRecord:
        state: search.TrialStateName = {
            "Running": "running",
            "Succeeded": "complete",
            "Failed": "failed",
            "Pruned": "pruned",
            "Stopped": "pruned",
        }[self.outcome]  # type: ignore[assignment]
        return search.TrialRecord(
            number=self.trial,
            params=self.params,
            state=state,
            value=self.value if self.outcome == "Succeeded" else None,
            intermediate=self.intermediate,
            grid_id=self.grid_id,
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _epoch_value(record: Mapping[str, Any], metric: str) -> float | None:
    """A history entry's metric, in either shape: `{"epoch", "metrics": {...}}` (the CRD's
    EpochRecord) or flat `{"epoch", "val_accuracy": ...}` (what the trainer emits)."""
    metrics = record.get("metrics")
    if isinstance(metrics, Mapping) and metric in metrics:
        return _number(metrics[metric])
    return _number(record.get(metric))


def intermediate_values(training: Mapping[str, Any], metric: str) -> tuple[tuple[int, float], ...]:
    """(epoch, objective) from status.training: the bounded history plus the latest report."""
    points: dict[int, float] = {}
    for rec in training.get("history") or ():
        if not isinstance(rec, Mapping):
            continue
        epoch, value = rec.get("epoch"), _epoch_value(rec, metric)
        if isinstance(epoch, int) and not isinstance(epoch, bool) and value is not None:
            points[epoch] = value
    epoch = training.get("epoch")
    latest = _number((training.get("metrics") or {}).get(metric))
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 and latest is not None:
        points.setdefault(epoch, latest)
    return tuple(sorted(points.items()))


def results_location(run: str, spec: Mapping[str, Any]) -> str | None:
    """Where the contract puts a run's results (`<bucket>/<prefix>/<run>`), for a run whose
    status does not (yet) carry the URI the trainer reported."""
    results = spec.get("results") or {}
    bucket = results.get("bucket")
    if not bucket or not run:
        return None
    prefix = str(results.get("prefix") or "").strip("/")
    return f"s3://{bucket}/{prefix}/{run}" if prefix else f"s3://{bucket}/{run}"


def observe_child(body: Mapping[str, Any], experiment: str, metric: str) -> ChildRun | None:
    """Parse a child TrainingRun; None when it is not a trial of `experiment`."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if labels.get(LABEL_EXPERIMENT) != experiment:
        return None
    try:
        trial = int(annotations.get(ANNOTATION_TRIAL, labels.get(LABEL_TRIAL, "")))
    except ValueError:
        return None
    try:
        raw = json.loads(annotations.get(ANNOTATION_PARAMETERS, "{}"))
    except ValueError:
        raw = {}
    params: dict[str, search.ParamValue] = {
        str(k): v
        for k, v in (raw if isinstance(raw, dict) else {}).items()
        if isinstance(v, str | int | float) and not isinstance(v, bool)
    }
    grid_raw = annotations.get(ANNOTATION_GRID_ID)
    grid_id = int(grid_raw) if isinstance(grid_raw, str) and grid_raw.isdigit() else None
    status = body.get("status") or {}
    training = status.get("training") or {}
    points = intermediate_values(training, metric)
    last = points[-1][1] if points else None
    uri = (
        status.get("resultsURI")
        or status.get("resultsUri")
        or training.get("resultsURI")
        or training.get("resultsUri")
        or results_location(meta.get("name", ""), body.get("spec") or {})
    )
    stopped = annotations.get(ANNOTATION_STOPPED)
    phase = status.get("phase")
    outcome: Outcome
    value = last
    if phase == "Succeeded":
        final = _number((training.get("metrics") or {}).get(metric))
        value = final if final is not None else last
        # A run that finished without reporting the objective cannot be ranked: a failure.
        outcome = "Succeeded" if value is not None else "Failed"
    elif stopped is not None:
        outcome = "Pruned" if stopped == STOP_PRUNED else "Stopped"
    elif phase == "Failed":
        outcome = "Failed"
    else:
        outcome = "Running"
    return ChildRun(
        name=str(meta.get("name", "")),
        trial=trial,
        params=params,
        outcome=outcome,
        value=value,
        intermediate=points,
        results_uri=str(uri) if uri else None,
        grid_id=grid_id,
        stop_requested=stopped is not None,
    )


# --- desired objects -----------------------------------------------------------------------------


def owner_reference(exp: Experiment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": exp.metadata.name,
        "uid": exp.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_trial_run(exp: Experiment, s: search.Suggestion) -> dict[str, Any]:
    """The child TrainingRun of a trial: the template, its parameters merged into the
    hyperparameters (so the same training code runs standalone and in a search)."""
    spec = exp.spec.template.model_dump(by_alias=True, exclude_none=True, mode="json")
    spec["hyperparameters"] = {**spec.get("hyperparameters", {}), **s.params}
    # A trial must outlive its end: the search is rebuilt from it (it goes with the Experiment).
    spec.pop("ttlSecondsAfterFinished", None)
    annotations = {
        ANNOTATION_TRIAL: str(s.number),
        ANNOTATION_PARAMETERS: json.dumps(s.params, sort_keys=True),
        ANNOTATION_SAMPLER: s.sampler,
    }
    if s.grid_id is not None:
        annotations[ANNOTATION_GRID_ID] = str(s.grid_id)
    return {
        "apiVersion": API_VERSION,
        "kind": RUN_KIND,
        "metadata": {
            "name": run_name(exp.metadata.name, s.number),
            "namespace": exp.metadata.namespace,
            "labels": {
                builders.LABEL_NAME: "accordion",
                builders.LABEL_MANAGED_BY: builders.MANAGED_BY,
                LABEL_EXPERIMENT: exp.metadata.name,
                LABEL_TRIAL: str(s.number),
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference(exp)],
        },
        "spec": spec,
    }


def stop_patch(why: str) -> dict[str, Any]:
    """Merge patch that stops a child gracefully and marks its outcome."""
    return {"metadata": {"annotations": {ANNOTATION_STOPPED: why}}, "spec": {"suspend": True}}


# --- the plan ------------------------------------------------------------------------------------


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
    plan.status_patch = _diff(exp, new)
    return plan


def _diff(exp: Experiment, new: dict[str, Any]) -> dict[str, Any] | None:
    old = exp.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    if old == new:
        return None
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None  # merge patch: null removes
    return patch
