"""What the search needs of one trial TrainingRun (a dict as the apiserver returns it): its
parameters, outcome and objective values (pure)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from accordion_operator.api.experiment import KIND, Experiment, Outcome
from accordion_operator.api.trainingrun import results_path
from accordion_operator.core.objects import LABEL_EXPERIMENT
from accordion_operator.experiment import search
from accordion_operator.experiment.trials import (
    ANNOTATION_GRID_ID,
    ANNOTATION_PARAMETERS,
    ANNOTATION_STOPPED,
    ANNOTATION_TRIAL,
    LABEL_TRIAL,
    STOP_PRUNED,
)


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


def results_location(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> str | None:
    """Where a trial's pods write its results, from its metadata and spec as the run controller
    derives `status.resultsURI` (`api.trainingrun.results_path`). Not from the trial's status:
    its launcher may patch that, and user code steers what the trainer reports in `training`;
    neither can change the metadata or the spec."""
    results = spec.get("results") or {}
    bucket, name, uid = results.get("bucket"), meta.get("name"), meta.get("uid")
    if not bucket or not name or not uid:
        return None
    prefix, namespace = str(results.get("prefix") or ""), str(meta.get("namespace") or "")
    return f"s3://{bucket}/{results_path(prefix, namespace, str(name), str(uid))}"


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
        results_uri=results_location(meta, body.get("spec") or {}),
        grid_id=grid_id,
        stop_requested=stopped is not None,
    )


def _owned_by(body: Mapping[str, Any], uid: str) -> bool:
    """Only the experiment's own children count (a run labelled by hand does not)."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid and r.get("kind") == KIND for r in refs)


def owned_children(exp: Experiment, trials: Iterable[Mapping[str, Any]]) -> list[ChildRun]:
    """The experiment's trials among the runs labelled with its name."""
    meta = exp.metadata
    return [
        c
        for t in trials
        if _owned_by(t, meta.uid)
        and (c := observe_child(t, meta.name, exp.spec.objective.metric)) is not None
    ]
