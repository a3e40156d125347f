"""The Experiment CRD from the pydantic models: schema, validation rules, printer columns."""

from __future__ import annotations

from typing import Any

from accordion_operator.api.common import cel
from accordion_operator.api.experiment import (
    KIND,
    MAX_EXPERIMENT_NAME,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    ExperimentSpec,
    ExperimentStatus,
)
from accordion_operator.crd.schema import crd_document, model_schema


def open_api_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A hyperparameter search that runs TrainingRuns made from a template.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(ExperimentSpec),
            "status": model_schema(ExperimentStatus, in_status=True),
        },
        "x-kubernetes-validations": [
            cel(
                f"size(self.metadata.name) <= {MAX_EXPERIMENT_NAME}",
                f"Experiment names must be at most {MAX_EXPERIMENT_NAME} characters (its runs "
                "are named <experiment>-<trial:03d>)",
            ),
        ],
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Best",
        "type": "number",
        "jsonPath": ".status.bestRun.metric",
        "description": "objective metric of the best finished run",
    },
    {
        "name": "Runs",
        "type": "string",
        "jsonPath": ".status.runsSummary",
        "description": "finished/maxRuns",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Algorithm", "type": "string", "priority": 1, "jsonPath": ".spec.algorithm"},
    {"name": "Metric", "type": "string", "priority": 1, "jsonPath": ".spec.objective.metric"},
    {"name": "Best-Run", "type": "string", "priority": 1, "jsonPath": ".status.bestRun.name"},
]


def build_crd() -> dict[str, Any]:
    return crd_document(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        schema=open_api_schema(),
        subresources={"status": {}},
        printer_columns=PRINTER_COLUMNS,
    )
