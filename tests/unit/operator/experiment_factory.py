"""Builders of Experiment objects and of their child runs (as the apiserver returns them), and a
small in-memory driver that plays the TrainingRun controller and the trainer for
`decide_experiment`."""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from merge_patch import merge

from accordion_dev.simulated_runs import experiment_body
from accordion_operator.api.experiment import Experiment
from accordion_operator.experiment.decide import ExperimentPlan, decide_experiment
from accordion_operator.experiment.observe import ChildRun, observe_child
from accordion_operator.experiment.trials import ANNOTATION_STOPPED

BASE = experiment_body(
    "mnist-lr",
    metadata={"namespace": "team-a", "uid": "exp-uid", "generation": 1},
    template={"epochs": 9},
    seed=42,
    maxRuns=8,
    parallelism=2,
)


def make_exp(**spec: Any) -> Experiment:
    return Experiment.model_validate(merge(BASE, {"spec": spec}))


def with_status(exp: Experiment, patch: Mapping[str, Any] | None) -> Experiment:
    """The experiment after its status merge patch was applied (as the apiserver would)."""
    if not patch:
        return exp
    body = exp.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["status"] = merge(body.get("status") or {}, patch)
    return Experiment.model_validate(body)


def finish(
    body: dict[str, Any],
    value: float | None,
    *,
    phase: str = "Succeeded",
    curve: list[float] | None = None,
    flat: bool = True,
) -> None:
    """Play the trainer and the run controller: epochs reported, run finished."""
    training: dict[str, Any] = {}
    if curve:
        training["history"] = [
            {"epoch": i + 1, "val_accuracy": v}
            if flat
            else {"epoch": i + 1, "metrics": {"val_accuracy": v}}
            for i, v in enumerate(curve)
        ]
        training["epoch"] = len(curve)
    if value is not None:
        training["metrics"] = {"val_accuracy": value, "loss": 1 - value}
    body["status"] = {"phase": phase, "training": training}


def report(body: dict[str, Any], curve: list[float]) -> None:
    """Play the trainer mid-run: per-epoch history so far."""
    body["status"] = {
        "phase": "Running",
        "training": {
            "epoch": len(curve),
            "metrics": {"val_accuracy": curve[-1]},
            "history": [{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(curve)],
        },
    }


def apply_plan(children: dict[str, dict[str, Any]], plan: ExperimentPlan) -> None:
    """What the kube layer does with a plan: create (AlreadyExists kept; the apiserver gives
    each new object a uid, here one derived from the name so that a replay is identical) and
    stop."""
    for obj in plan.create:
        body = copy.deepcopy(obj)
        body["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, body["metadata"]["name"]))
        children.setdefault(obj["metadata"]["name"], body)
    for name, why in plan.stop:
        child = children[name]
        child["metadata"].setdefault("annotations", {})[ANNOTATION_STOPPED] = why
        child["spec"]["suspend"] = True


def observe(exp: Experiment, children: Mapping[str, dict[str, Any]]) -> list[ChildRun]:
    out = []
    for body in children.values():
        c = observe_child(body, exp.metadata.name, exp.spec.objective.metric)
        assert c is not None
        out.append(c)
    return out


def quality(params: Mapping[str, Any]) -> float:
    """A made-up objective with its optimum at learning_rate = 0.01."""
    lr = float(params["learning_rate"])
    return 0.99 - 0.1 * (math.log10(lr) + 2) ** 2


def drive(
    exp: Experiment,
    score: Callable[[Mapping[str, Any]], float | None] = quality,
    passes: int = 200,
    now: float = 1_700_000_000.0,
) -> tuple[Experiment, dict[str, dict[str, Any]]]:
    """Decide, create, finish every running child with `score`, repeat until the end."""
    children: dict[str, dict[str, Any]] = {}
    for _ in range(passes):
        plan = decide_experiment(exp, observe(exp, children), now)
        exp = with_status(exp, plan.status_patch)
        apply_plan(children, plan)
        if exp.status.phase in ("Succeeded", "Failed") and not plan.create:
            break
        for body in children.values():
            if "status" not in body and not body["spec"].get("suspend"):
                value = score(body["spec"]["hyperparameters"])
                finish(body, value, phase="Succeeded" if value is not None else "Failed")
        now += 10
    return exp, children
