"""examples/diabetes-experiment.yaml: a valid Experiment whose objective (`val_loss`, minimised)
is a metric the trainer reports for the user-compiled regression model, read from a trial's
`status.training` as the launcher writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from accordion_operator.api.experiment import Experiment
from accordion_operator.core.objects import LABEL_EXPERIMENT
from accordion_operator.experiment.observe import observe_child
from accordion_operator.experiment.trials import ANNOTATION_TRIAL
from accordion_operator.trainingrun.checks import hyperparameter_problem
from accordion_trainer.progress import build_training_status

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "diabetes-experiment.yaml"


def _experiment() -> Experiment:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] |= {"namespace": "default", "uid": "u", "generation": 1}
    return Experiment.model_validate(body)


def test_manifest_validates_and_minimises_val_loss() -> None:
    spec = _experiment().spec
    assert (spec.objective.metric, spec.objective.direction) == ("val_loss", "minimize")
    model = spec.template.model
    # the CEL rules of the CRD, which pydantic does not run: one source, a command with user code
    assert model.builtin is None
    assert model.bucket_object is not None
    assert model.command
    assert spec.template.data is not None
    assert model.bucket_object.startswith(spec.template.data.bucket + "/")
    assert spec.parallelism <= spec.max_runs
    for name, value in spec.template.hyperparameters.items():
        assert hyperparameter_problem(name, value) is None
    for p in spec.parameters:
        assert p.min is not None
        assert p.max is not None
        assert hyperparameter_problem(p.name, p.min) is None
        assert hyperparameter_problem(p.name, p.max) is None


def _trial(training: dict[str, Any], phase: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "diabetes-lr-000",
            "labels": {LABEL_EXPERIMENT: "diabetes-lr"},
            "annotations": {ANNOTATION_TRIAL: "0"},
        },
        "status": {"phase": phase, "training": training},
    }


def test_trial_status_from_the_trainer_yields_the_objective() -> None:
    # rank 0's final progress line for the regression model: the compiled metric names
    history = [
        {
            "epoch": e,
            "worldSize": 2,
            "seconds": 0.4,
            "loss": 4000.0 / e,
            "mae": 60.0 - e,
            "val_loss": 3500.0 / e,
            "val_mae": 58.0 - e,
        }
        for e in (1, 2, 3)
    ]
    progress = {
        "epoch": 3,
        "batch": 0,
        "worldSize": 2,
        "metrics": {k: v for k, v in history[-1].items() if k not in ("epoch", "worldSize")},
        "history": history,
    }
    training = build_training_status(progress, 0.0)
    child = observe_child(_trial(training, "Succeeded"), "diabetes-lr", "val_loss")
    assert child is not None
    assert child.outcome == "Succeeded"
    assert child.value == 3500.0 / 3
    assert [e for e, _ in child.intermediate] == [1, 2, 3]
