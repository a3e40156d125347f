"""examples/user-command/trainingrun.yaml: a valid TrainingRun whose model is the user's own
command from a code archive in the data bucket (trainer: usercmd.py, elastic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.trainingrun.checks import hyperparameter_problem
from accordion_trainer.usercmd import training_entry

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "user-command" / "trainingrun.yaml"


def test_manifest_validates_and_runs_the_users_command() -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] |= {"namespace": "default", "uid": "u", "generation": 1}
    spec = TrainingRun.model_validate(body).spec
    model = spec.model
    # the CEL rules of the CRD, which pydantic does not run: one source, a command with user code
    assert model.builtin is None
    assert model.bucket_object is not None
    assert model.command
    assert spec.data is not None
    assert model.bucket_object.startswith(spec.data.bucket + "/")
    for name, value in spec.hyperparameters.items():
        assert hyperparameter_problem(name, value) is None
    as_env = json.dumps({"bucketObject": model.bucket_object, "command": model.command})
    assert training_entry(as_env)[-1] == "exec"  # not the built-in trainer
